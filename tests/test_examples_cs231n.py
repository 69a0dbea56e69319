"""examples/cs231n: CS231n-style NumPy layers, each checked by its op kind.

Each right backward function passes ``check_op`` of its kind, and each bug planted with
CS231N_BUG fails with the finding examples/cs231n/README.md names; the README's table lists
them all. The composition of the same functions is tests/test_ops_cnn.py's.
"""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

from bpref.oracle.ops import check_op

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "cs231n"


def _example():
  spec = importlib.util.spec_from_file_location("cs231n_layers", EXAMPLE / "layers.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


LAYERS = _example()

CHECKS = [  # (id, CS231N_BUG, kind, function, options, the planted bug's finding)
    ("affine", "affine", "dense", "affine_backward", dict(signature="cs231n", layout="in_out"),
     "batch_sum_missing"),
    ("relu", "relu", "activation", "relu_backward", dict(name="relu", signature="cs231n"),
     "kink_side"),
    ("conv", "conv", "conv2d", "conv_backward_naive", dict(name="s1p1", signature="cs231n"),
     "overlap_overwritten"),
    ("maxpool", "maxpool", "maxpool2d", "max_pool_backward_naive", dict(signature="cs231n"),
     "all_ties"),
    ("batchnorm", "batchnorm", "batchnorm", "batchnorm_op", {}, "variance_term_missing"),
    ("spatial_batchnorm", "batchnorm", "batchnorm", "batchnorm_op", dict(layout="nchw"),
     "variance_term_missing"),
    ("dropout", "dropout", "dropout", "dropout_op", dict(name="p0.5"), "scale_twice"),
    ("softmax", "softmax", "loss", "softmax_loss",
     dict(name="softmax_cross_entropy", targets="labels"), "constant_factor"),
]
IDS = [c[0] for c in CHECKS]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", CHECKS, ids=IDS)
def test_each_right_function_passes_its_kind(case, dtype, monkeypatch):
  _, _, kind, function, options, _ = case
  monkeypatch.delenv("CS231N_BUG", raising=False)
  report = check_op(kind, getattr(LAYERS, function), dtype=dtype, **options)
  assert report.verdict == "pass", report.text()


@pytest.mark.parametrize("case", CHECKS, ids=IDS)
def test_each_planted_bug_is_named(case, monkeypatch):
  _, bug, kind, function, options, code = case
  monkeypatch.setenv("CS231N_BUG", bug)
  report = check_op(kind, getattr(LAYERS, function), **options)
  assert report.verdict == "fail"
  assert report.diagnosis[0].code == code, report.text()


@pytest.mark.parametrize("name", ["s1p0", "s2p1", "s3p2"])
def test_the_naive_convolution_passes_other_strides_and_paddings(name, monkeypatch):
  monkeypatch.delenv("CS231N_BUG", raising=False)
  report = check_op("conv2d", LAYERS.conv_backward_naive, name=name, signature="cs231n")
  assert report.verdict == "pass", report.text()


def test_the_readme_names_each_bug_and_its_finding():
  rows = {}
  for line in (EXAMPLE / "README.md").read_text().splitlines():
    cells = [c.strip().strip("`") for c in line.split("|")[1:-1]]
    if len(cells) >= 4 and cells[0] in LAYERS.BUGS:
      rows[cells[0]] = cells
  assert set(rows) == set(LAYERS.BUGS)
  for _, bug, _, _, _, code in CHECKS:
    assert code in rows[bug][3], (bug, rows[bug])


def test_the_readme_command_names_the_first_wrong_step():
  env = dict(os.environ, CS231N_BUG="maxpool")
  out = subprocess.run([sys.executable, "-m", "bpref", "check", "examples/cs231n/layers.py:CNN",
                        "--op", "block", "--op-name", "cnn", "--signature", "cs231n"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 1, out.stderr
  assert "pool (maxpool2d): every tied maximum" in out.stdout and "[all_ties]" in out.stdout
