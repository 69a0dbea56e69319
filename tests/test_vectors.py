"""Golden vectors: export, check a foreign implementation, reject tampered files."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from bpref import vectors

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_oracle import row_major  # noqa: E402  (an independent NumPy implementation)

EXPORT = ["--cases", "6", "--seed", "3", "--losses", "squared_error",
          "--activations", "identity,tanh,sigmoid,relu"]


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
  directory = tmp_path_factory.mktemp("golden")
  assert vectors.main(["export", str(directory)] + EXPORT) == 0
  return directory


def _manifest(directory):
  with open(os.path.join(directory, "manifest.json")) as fh:
    return json.load(fh)


def _foreign_results(golden, transform=lambda name, arr: arr):
  """Run the independent NumPy implementation on every case's inputs."""
  results = {}
  for entry in _manifest(golden)["cases"]:
    with np.load(os.path.join(golden, entry["file"]), allow_pickle=False) as data:
      L = len(entry["activations"])
      weights = [data[f"W{l}"] for l in range(1, L + 1)]
      biases = ([data[f"b{l}"] for l in range(1, L + 1)] if entry["bias"]
                else [np.zeros(n) for n in entry["sizes"][1:]])
      dW, db = row_major(weights, biases, entry["activations"], entry["loss"], data["x"], data["t"],
                         reduction=entry["reduction"])
    out = {f"dW{l}": transform(f"dW{l}", g) for l, g in enumerate(dW, start=1)}
    if entry["bias"]:
      out.update({f"db{l}": transform(f"db{l}", g) for l, g in enumerate(db, start=1)})
    results[entry["file"]] = out
  return results


def test_export_writes_manifest_with_hashes_and_is_reproducible(golden, tmp_path):
  manifest = _manifest(golden)
  assert manifest["schema"] == "bpref-vectors/1" and len(manifest["cases"]) == 6
  for entry in manifest["cases"]:
    assert entry["sha256"] == vectors.sha256(os.path.join(golden, entry["file"]))
    assert entry["layout"] == "out_in" and entry["dtype"] == "float64"
    assert 0 < entry["tolerance"] < 1e-10
    assert {"sizes", "activations", "loss", "reduction", "bias"} <= set(entry)
  again = tmp_path / "again"
  assert vectors.main(["export", str(again)] + EXPORT) == 0
  assert [e["sha256"] for e in _manifest(again)["cases"]] == [e["sha256"] for e in manifest["cases"]]


def test_independent_implementation_passes_the_vectors(golden, tmp_path, capsys):
  results = tmp_path / "results"
  vectors.write_results(results, _foreign_results(golden))
  assert vectors.main(["check", str(golden), str(results)]) == 0
  assert "PASS" in capsys.readouterr().out


def test_wrong_implementation_fails_the_vectors(golden, tmp_path, capsys):
  results = tmp_path / "results"
  vectors.write_results(results, _foreign_results(golden, lambda name, g: g * 1.001))
  assert vectors.main(["check", str(golden), str(results), "--json"]) == 1
  summary = json.loads(capsys.readouterr().out)
  assert not summary["passed"] and all(not r["passed"] for r in summary["cases"])
  transposed = tmp_path / "transposed"
  vectors.write_results(transposed, _foreign_results(golden, lambda name, g: g.T))
  summary = vectors.check(golden, transposed)
  non_square = [r for r in summary["cases"] if "transposed" in r["message"]]
  assert non_square and not summary["passed"]


def _copy(golden, tmp_path):
  target = tmp_path / "copy"
  target.mkdir()
  for name in os.listdir(golden):
    (target / name).write_bytes((golden / name).read_bytes())
  return target


def test_tampered_file_is_rejected(golden, tmp_path, capsys):
  copy = _copy(golden, tmp_path)
  results = tmp_path / "results"
  vectors.write_results(results, _foreign_results(golden))
  path = copy / "case_0002.npz"
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF
  path.write_bytes(bytes(data))
  assert vectors.main(["check", str(copy), str(results)]) == 2
  assert "case_0002.npz" in capsys.readouterr().err


def test_edited_and_rehashed_vectors_are_rejected(golden, tmp_path):
  copy = _copy(golden, tmp_path)
  path = copy / "case_0001.npz"
  with np.load(path, allow_pickle=False) as data:
    arrays = {k: data[k] for k in data.files}
  arrays["dW1"] = arrays["dW1"] * 2
  with open(path, "wb") as fh:
    np.savez(fh, **arrays)
  manifest = _manifest(copy)
  manifest["cases"][1]["sha256"] = vectors.sha256(path)
  (copy / "manifest.json").write_text(json.dumps(manifest))
  results = tmp_path / "results"
  vectors.write_results(results, _foreign_results(golden))
  with pytest.raises(vectors.VectorsError, match="not bpref's"):
    vectors.check(copy, results)


def test_pickled_arrays_are_refused_even_with_a_matching_hash(golden, tmp_path):
  copy = _copy(golden, tmp_path)
  path = copy / "case_0000.npz"
  with open(path, "wb") as fh:
    np.savez(fh, x=np.array([{"evil": 1}], dtype=object))
  manifest = _manifest(copy)
  manifest["cases"][0]["sha256"] = vectors.sha256(path)
  (copy / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(vectors.VectorsError, match="pickled"):
    vectors.check(copy, copy)


def test_missing_or_foreign_manifest_is_a_clear_error(tmp_path, capsys):
  assert vectors.main(["check", str(tmp_path), str(tmp_path)]) == 2
  assert "manifest.json" in capsys.readouterr().err
  (tmp_path / "manifest.json").write_text(json.dumps({"schema": "other/9"}))
  assert vectors.main(["check", str(tmp_path), str(tmp_path)]) == 2
  assert "schema" in capsys.readouterr().err
  assert vectors.main([]) == 2
