"""bpref check --exec: the reference clients in C, Rust and JavaScript, each correct one passing
and each planted bug caught with the finding that names it.

Each client is built (or run) where its toolchain exists: gcc, rustc, node; a missing toolchain
skips that client's tests and says which.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess

import pytest

from bpref.oracle import cli as oracle_cli
from bpref.oracle import exec as ex

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
SMALL = dict(examples=6, seed=0)


def _tool(name):
  if shutil.which(name) is None:
    pytest.skip(f"{name} is not installed, so its reference client cannot be built or run here")


@pytest.fixture(scope="module")
def c_client(tmp_path_factory):
  _tool("gcc")
  out = tmp_path_factory.mktemp("c")
  built = {}
  for name, flags in (("mlp", []), ("mlp_bug", ["-DPLANTED_BUG"])):
    path = str(out / name)
    subprocess.run(["gcc", "-O2", "-std=c99", "-Wall", "-Werror", *flags, "-o", path,
                    os.path.join(EXAMPLES, "c", "mlp.c"), "-lm"], check=True, timeout=120)
    built[name] = shlex.quote(path)
  return built


@pytest.fixture(scope="module")
def rust_client(tmp_path_factory):
  _tool("rustc")
  out = tmp_path_factory.mktemp("rust")
  built = {}
  for name, flags in (("mlp", []), ("mlp_bug", ["--cfg", "planted_bug"])):
    path = str(out / name)
    subprocess.run(["rustc", "-O", *flags, "-o", path, os.path.join(EXAMPLES, "rust", "mlp.rs")],
                   check=True, timeout=300, capture_output=True)
    built[name] = shlex.quote(path)
  return built


@pytest.fixture(scope="module")
def js_client():
  _tool("node")
  script = shlex.quote(os.path.join(EXAMPLES, "js", "mlp.js"))
  return {"mlp": f"node {script}", "mlp_bug": f"node {script} --planted-bug"}


CLIENTS = {
    # client, its planted bug's finding
    "c_client": "hidden_fprime_missing",
    "rust_client": "constant_factor",
    "js_client": "output_fprime_missing",
}


@pytest.mark.parametrize("client", list(CLIENTS))
def test_reference_client_passes_and_its_planted_bug_is_diagnosed(client, request):
  built = request.getfixturevalue(client)
  good = ex.check(built["mlp"], **SMALL)
  assert good.verdict == "pass", good.text()
  assert good.cases >= 20  # the probes and the drawn networks, none vacuous
  assert set(good.spec["activations"]) == {"identity", "relu", "tanh", "sigmoid"}  # its hello
  bad = ex.check(built["mlp_bug"], **SMALL)
  assert bad.verdict == "fail"
  assert bad.kind == "numeric"
  assert bad.codes[0] == CLIENTS[client], bad.text()


def test_rust_bug_factor_is_named_as_the_batch_size_read_from_n0(rust_client):
  bad = ex.check(rust_client["mlp_bug"], **SMALL)
  assert "B/n_0" in bad.diagnosis[0].summary, bad.text()


@pytest.mark.parametrize("options", [dict(dtype="float32"), dict(layout="in_out", reduction="sum"),
                                     dict(bias=False, losses=("half_squared_error",))])
def test_c_client_passes_in_every_declared_dtype_layout_and_reduction(c_client, options):
  report = ex.check(c_client["mlp"], **SMALL, **options)
  assert report.verdict == "pass", report.text()
  for key, value in options.items():
    assert report.spec[key] == value


def test_workers_give_the_serial_verdict_and_minimal_case(c_client):
  serial = ex.check(c_client["mlp_bug"], **SMALL)
  parallel = ex.check(c_client["mlp_bug"], workers=3, **SMALL)
  assert parallel.verdict == serial.verdict == "fail"
  assert parallel.case["arch"] == serial.case["arch"]
  assert parallel.codes == serial.codes
  assert parallel.examples_to_failure == serial.examples_to_failure


def test_cli_json_reproducer_and_replay(c_client, tmp_path, capsys):
  repro = str(tmp_path / "min.wire")
  code = oracle_cli.main(["--exec", c_client["mlp_bug"], "--examples", "4", "--json",
                          "--reproducer", repro])
  out = capsys.readouterr().out
  assert code == oracle_cli.EXIT_BUG
  report = json.loads(out)  # stdout is the report alone
  assert report["verdict"] == "fail" and report["diagnosis"][0]["code"] == "hidden_fprime_missing"
  assert "--replay" in report["reproducer"]
  # the file holds bpref's hello, the minimal case and bye, in the wire format
  with open(repro, "rb") as fh:
    messages = ex.wire.read_messages(fh.read())
  assert [h["type"] for h, _ in messages] == ["hello", "case", "bye"]
  header, arrays = messages[1]
  assert header["sizes"] == report["case"]["arch"]["sizes"]
  assert arrays["x"].tolist() == report["case"]["arrays"]["x"]
  assert oracle_cli.main(["--exec", c_client["mlp_bug"], "--replay", repro]) == oracle_cli.EXIT_BUG
  assert "FAIL: gradient wrong in" in capsys.readouterr().out
  assert oracle_cli.main(["--exec", c_client["mlp"], "--replay", repro]) == oracle_cli.EXIT_PASS
  assert capsys.readouterr().out.startswith("PASS")
  # the raw replay: the client reads the file on stdin and answers the case
  with open(repro, "rb") as fh:
    raw = subprocess.run(shlex.split(c_client["mlp_bug"]), stdin=fh, capture_output=True, timeout=30)
  replies = ex.wire.read_messages(raw.stdout)
  assert raw.returncode == 0 and [h["type"] for h, _ in replies] == ["hello", "grads"]


def test_cli_refuses_a_check_beyond_what_the_client_declares(c_client, capsys):
  code = oracle_cli.main(["--exec", c_client["mlp"], "--activations", "relu,gelu"])
  err = capsys.readouterr().err
  assert code == oracle_cli.EXIT_USAGE
  assert "gelu" in err and "--activations relu" in err


def test_cli_names_a_command_that_cannot_start(tmp_path, capsys):
  missing = str(tmp_path / "no-such-program")
  assert oracle_cli.main(["--exec", missing]) == oracle_cli.EXIT_USAGE
  assert "cannot start" in capsys.readouterr().err
