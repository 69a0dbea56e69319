"""Golden vectors: export, check a foreign implementation, reject tampered files.

Expected values here never come from the code under test: counts are the ones
asked for, hashes are computed with hashlib, vacuous cases are built by hand.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np
import pytest

from bpref.oracle import vectors

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_oracle import row_major  # noqa: E402  (an independent NumPy implementation)

EXPORT = ["--cases", "6", "--seed", "3", "--losses", "squared_error",
          "--activations", "identity,tanh,sigmoid,relu"]


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
  directory = tmp_path_factory.mktemp("golden")
  assert vectors.main(["export", str(directory)] + EXPORT) == 0
  return directory


@pytest.fixture(scope="module")
def foreign(golden, tmp_path_factory):
  """The independent implementation's results on ``golden``."""
  directory = tmp_path_factory.mktemp("foreign")
  vectors.write_results(directory, _foreign_results(golden))
  return directory


def _manifest(directory):
  with open(os.path.join(directory, "manifest.json")) as fh:
    return json.load(fh)


def _write_manifest(directory, manifest):
  (directory / "manifest.json").write_text(json.dumps(manifest))


def _hexdigest(path):
  with open(path, "rb") as fh:
    return hashlib.sha256(fh.read()).hexdigest()


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


def _zero_results(directory):
  """An implementation that returns zeros of the right shapes."""
  results = {}
  for entry in _manifest(directory)["cases"]:
    sizes = entry["sizes"]
    out = {f"dW{l}": np.zeros((sizes[l], sizes[l - 1])) for l in range(1, len(sizes))}
    if entry["bias"]:
      out.update({f"db{l}": np.zeros(sizes[l]) for l in range(1, len(sizes))})
    results[entry["file"]] = out
  return results


def _copy(golden, tmp_path):
  target = tmp_path / "copy"
  target.mkdir()
  for name in os.listdir(golden):
    (target / name).write_bytes((golden / name).read_bytes())
  return target


def _refused(argv, capsys, *phrases):
  """Run ``bpref vectors argv``: exit 2 and one line of stderr naming each of ``phrases``."""
  assert vectors.main([str(a) for a in argv]) == 2
  captured = capsys.readouterr()
  err = captured.err.strip()
  assert "Traceback" not in captured.err and "PASS" not in captured.out
  assert len(err.splitlines()) == 1, err
  assert err.startswith("bpref vectors: error: "), err
  for phrase in phrases:
    assert phrase in err, err
  return err


# ---------------------------------------------------------------- export and a correct check


def test_export_writes_manifest_with_hashes_and_is_reproducible(golden, tmp_path):
  manifest = _manifest(golden)
  assert manifest["schema"] == "bpref-vectors/2"
  assert manifest["count"] == 6 and len(manifest["cases"]) == 6
  for entry in manifest["cases"]:
    assert entry["sha256"] == _hexdigest(golden / entry["file"])
    assert entry["layout"] == "out_in" and entry["dtype"] == "float64"
    assert 0 < entry["tolerance"] < 1e-10
    assert {"sizes", "activations", "loss", "reduction", "bias"} <= set(entry)
  again = tmp_path / "again"
  assert vectors.main(["export", str(again)] + EXPORT) == 0
  assert [e["sha256"] for e in _manifest(again)["cases"]] == [e["sha256"] for e in manifest["cases"]]


def test_manifest_says_which_settings_vary_and_export_prints_them(tmp_path, capsys):
  directory = tmp_path / "mixed"
  assert vectors.main(["export", str(directory), "--cases", "12", "--seed", "0"]) == 0
  out = capsys.readouterr().out
  manifest = _manifest(directory)
  for key in ("loss", "reduction", "bias", "dtype", "layout"):
    seen = [entry[key] for entry in manifest["cases"]]
    assert sorted(map(str, manifest["settings"][key])) == sorted({str(v) for v in seen}), key
  varying = [key for key, values in manifest["settings"].items() if len(values) > 1]
  assert "reduction" in varying and "bias" in varying  # the default export mixes both
  assert "the cases differ in " in out and all(f"{key} (" in out for key in varying)


def _stored_gradients_differ(directory):
  """The cases whose stored dW_l, db_l differ from the independent implementation's."""
  differ = []
  for name, computed in _foreign_results(directory).items():
    with np.load(directory / name, allow_pickle=False) as data:
      for key, value in computed.items():
        scale = max(float(np.abs(value).max()), 1.0)
        if not np.abs(data[key] - value).max() <= 1e-10 * scale:
          differ.append((name, key))
  return differ


def test_stored_gradients_are_those_of_an_independent_implementation(golden, tmp_path):
  assert _stored_gradients_differ(golden) == []
  # Many cases of one shape: a truth cache keyed by shape once stored the first
  # case's gradients for the others (4 of these 40 were wrong).
  directory = tmp_path / "same_shapes"
  assert vectors.main(["export", str(directory), "--cases", "40", "--max-depth", "1",
                       "--losses", "squared_error", "--activations", "identity"]) == 0
  assert _stored_gradients_differ(directory) == []


def test_independent_implementation_passes_with_the_count(golden, foreign, capsys):
  assert vectors.main(["check", str(golden), str(foreign)]) == 0
  out = capsys.readouterr().out
  assert out.strip().splitlines()[-1] == "PASS: 6 of 6 cases"
  assert vectors.main(["check", str(golden), str(foreign), "--json"]) == 0
  summary = json.loads(capsys.readouterr().out)
  assert summary["passed"] and summary["checked"] == 6 and summary["total"] == 6
  assert summary["vacuous"] == 0 and summary["failed"] == 0


def test_export_prints_the_manifest_sha256_and_check_accepts_it(golden, foreign, tmp_path, capsys):
  directory = tmp_path / "anchored"
  assert vectors.main(["export", str(directory)] + EXPORT) == 0
  out = capsys.readouterr().out
  digest = _hexdigest(directory / "manifest.json")
  assert f"manifest sha256: {digest}" in out
  assert vectors.main(["check", str(directory), str(foreign), "--expect-manifest", digest]) == 0
  assert "PASS: 6 of 6 cases" in capsys.readouterr().out
  summary = vectors.check(directory, foreign, expect_manifest=digest.upper())
  assert summary["passed"] and summary["manifest_sha256"] == digest


def test_wrong_implementation_fails_the_vectors(golden, tmp_path, capsys):
  results = tmp_path / "results"
  vectors.write_results(results, _foreign_results(golden, lambda name, g: g * 1.001))
  assert vectors.main(["check", str(golden), str(results)]) == 1
  assert capsys.readouterr().out.strip().splitlines()[-1] == "FAIL: 6 of 6 cases differ from bpref"
  assert vectors.main(["check", str(golden), str(results), "--json"]) == 1
  summary = json.loads(capsys.readouterr().out)
  assert not summary["passed"] and all(not r["passed"] for r in summary["cases"])
  transposed = tmp_path / "transposed"
  vectors.write_results(transposed, _foreign_results(golden, lambda name, g: g.T))
  summary = vectors.check(golden, transposed)
  non_square = [r for r in summary["cases"] if "transposed" in r["message"]]
  assert non_square and not summary["passed"]


def test_one_wrong_case_is_counted(golden, tmp_path, capsys):
  results = _foreign_results(golden)
  first = sorted(results)[0]
  results[first] = {k: v * 2 for k, v in results[first].items()}
  vectors.write_results(tmp_path / "results", results)
  assert vectors.main(["check", str(golden), str(tmp_path / "results")]) == 1
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[-1] == "FAIL: 1 of 6 cases differ from bpref"
  assert lines[0].startswith(f"{first}: FAIL")


# ---------------------------------------------------------------- no vacuous cases


def test_zero_gradients_fail_every_case_of_the_default_export(tmp_path, capsys):
  """The default export (20 cases, seed 0) once held 5 softmax outputs of one unit, all-zero."""
  directory = tmp_path / "default"
  assert vectors.main(["export", str(directory)]) == 0
  capsys.readouterr()
  manifest = _manifest(directory)
  assert manifest["count"] == 20 and len(manifest["cases"]) == 20
  for entry in manifest["cases"]:
    assert not (entry["activations"][-1] == "softmax" and entry["sizes"][-1] < 2), entry
    with np.load(directory / entry["file"], allow_pickle=False) as data:
      for name in data.files:
        if name.startswith("d"):
          assert np.any(data[name] != 0), (entry["file"], name)
  vectors.write_results(tmp_path / "zeros", _zero_results(directory))
  assert vectors.main(["check", str(directory), str(tmp_path / "zeros"), "--json"]) == 1
  summary = json.loads(capsys.readouterr().out)
  assert summary["checked"] == 20 and summary["failed"] == 20 and summary["vacuous"] == 0
  assert all(r["counted"] and r["passed"] is False for r in summary["cases"])


def _hand_made(directory, cases):
  """A manifest written by hand: ``cases`` is [(file, entry fields, arrays)], all counted."""
  directory.mkdir(exist_ok=True)
  entries = []
  for name, fields, arrays in cases:
    with open(directory / name, "wb") as fh:
      np.savez(fh, **arrays)
    entries.append(dict(fields, file=name, sha256=_hexdigest(directory / name), dtype="float64",
                        layout="out_in", tolerance=1e-12))
  _write_manifest(directory, {"schema": "bpref-vectors/2", "count": len(entries),
                              "cases": entries})


def _softmax_one_unit(rng):
  """softmax over one unit is 1 whatever z: every gradient is exactly 0."""
  x = rng.normal(size=(3, 2))
  arrays = {"W1": rng.normal(size=(1, 2)), "b1": rng.normal(size=1), "x": x,
            "t": rng.normal(size=(3, 1)), "dW1": np.zeros((1, 2)), "db1": np.zeros(1)}
  fields = {"sizes": [2, 1], "activations": ["softmax"], "loss": "squared_error",
            "reduction": "sum", "bias": True}
  return fields, arrays


def _dead_relu_layer(rng):
  """x > 0, W1 < 0, b1 < 0: every z_1 < 0, so a_1 = 0 and dW1, db1, dW2 are 0.

  y = b2 for every example, hence for the summed squared error db2 = sum_b 2 (b2 - t_b).
  """
  x = np.abs(rng.normal(size=(4, 3))) + 0.1
  W1 = -np.abs(rng.normal(size=(2, 3))) - 0.1
  b1, b2, t = -np.ones(2), rng.normal(size=1), rng.normal(size=(4, 1))
  arrays = {"W1": W1, "b1": b1, "W2": rng.normal(size=(1, 2)), "b2": b2, "x": x, "t": t,
            "dW1": np.zeros((2, 3)), "db1": np.zeros(2), "dW2": np.zeros((1, 2)),
            "db2": 2 * (b2 - t).sum(axis=0)}
  fields = {"sizes": [3, 2, 1], "activations": ["relu", "identity"], "loss": "squared_error",
            "reduction": "sum", "bias": True}
  return fields, arrays


@pytest.mark.parametrize("make", [_softmax_one_unit, _dead_relu_layer])
def test_check_does_not_count_a_vacuous_case(make, golden, tmp_path, capsys):
  rng = np.random.default_rng(7)
  real = _manifest(golden)["cases"][0]
  with np.load(golden / real["file"], allow_pickle=False) as data:
    real_arrays = {k: data[k] for k in data.files}
  fields, arrays = make(rng)
  directory = tmp_path / "hand"
  _hand_made(directory, [("vacuous.npz", fields, arrays),
                         ("real.npz", {k: real[k] for k in ("sizes", "activations", "loss",
                                                            "reduction", "bias")}, real_arrays)])
  zeros = tmp_path / "zeros"
  vectors.write_results(zeros, _zero_results(directory))
  assert vectors.main(["check", str(directory), str(zeros)]) == 1
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[0].startswith("vacuous.npz: skip vacuous, not counted")
  assert lines[1].startswith("real.npz: FAIL")
  assert lines[-1] == ("FAIL: 1 of 1 cases differ from bpref "
                       "(1 of the manifest's 2 cases vacuous, not counted)")
  right = tmp_path / "right"
  vectors.write_results(right, {"real.npz": _foreign_results(golden)[real["file"]],
                                "vacuous.npz": {k: v for k, v in arrays.items() if k[0] == "d"}})
  assert vectors.main(["check", str(directory), str(right)]) == 0
  assert capsys.readouterr().out.strip().splitlines()[-1] == \
      "PASS: 1 of 1 cases (1 of the manifest's 2 cases vacuous, not counted)"


def test_a_manifest_of_vacuous_cases_only_is_refused(tmp_path, capsys):
  rng = np.random.default_rng(8)
  directory = tmp_path / "hand"
  _hand_made(directory, [("a.npz",) + _softmax_one_unit(rng), ("b.npz",) + _dead_relu_layer(rng)])
  vectors.write_results(tmp_path / "zeros", _zero_results(directory))
  _refused(["check", directory, tmp_path / "zeros"], capsys, "all 2 cases are vacuous")


# ---------------------------------------------------------------- the tamper matrix


def _edit(edit):
  def apply(copy, golden, tmp_path):
    manifest = _manifest(copy)
    edit(manifest)
    _write_manifest(copy, manifest)
  return apply


def _escape_up(copy, golden, tmp_path):
  """A real case file outside DIR, with its true hash: only the path gives it away."""
  outside = tmp_path / "x.npz"
  outside.write_bytes((golden / "case_0000.npz").read_bytes())
  manifest = _manifest(copy)
  manifest["cases"][0]["file"] = "../x.npz"
  _write_manifest(copy, manifest)


def _escape_absolute(copy, golden, tmp_path):
  outside = tmp_path / "x.npz"
  outside.write_bytes((golden / "case_0000.npz").read_bytes())
  manifest = _manifest(copy)
  manifest["cases"][0]["file"] = str(outside)
  _write_manifest(copy, manifest)


def _escape_symlink(copy, golden, tmp_path):
  outside = tmp_path / "x.npz"
  outside.write_bytes((golden / "case_0000.npz").read_bytes())
  os.remove(copy / "case_0000.npz")
  os.symlink(outside, copy / "case_0000.npz")


def _raw(data: bytes):
  def apply(copy, golden, tmp_path):
    (copy / "manifest.json").write_bytes(data)
  return apply


def _rewrite_case(edit):
  """Change case_0001.npz's arrays and rehash it, as a careless exporter would."""
  def apply(copy, golden, tmp_path):
    path = copy / "case_0001.npz"
    with np.load(path, allow_pickle=False) as data:
      arrays = {k: data[k] for k in data.files}
    edit(arrays)
    with open(path, "wb") as fh:
      np.savez(fh, **arrays)
    manifest = _manifest(copy)
    manifest["cases"][1]["sha256"] = _hexdigest(path)
    _write_manifest(copy, manifest)
  return apply


def _delete(key):
  def edit(m):
    del m["cases"][2][key]
  return edit


def _set(key, value):
  def edit(m):
    m["cases"][2][key] = value
  return edit


TAMPER = {
    "empty": (_edit(lambda m: m.update(cases=[])), ("'cases' is empty", "count")),
    "empty_and_count_zero": (_edit(lambda m: m.update(cases=[], count=0)), ("'count' is 0",)),
    "trimmed": (_edit(lambda m: m.update(cases=m["cases"][:4])),
                ("lists 4 cases", "records 6", "trimmed")),
    "count_missing": (_edit(lambda m: m.pop("count")), ("no 'count'",)),
    "count_a_string": (_edit(lambda m: m.update(count="6")), ("'count' is '6'",)),
    "cases_missing": (_edit(lambda m: m.pop("cases")), ("'cases' is missing",)),
    "cases_an_object": (_edit(lambda m: m.update(cases={"a": 1})), ("'cases' is dict",)),
    "entry_not_an_object": (_edit(lambda m: m["cases"].__setitem__(1, "case_0001.npz")),
                            ("case 1", "expected an object")),
    "duplicate_entry": (_edit(lambda m: m["cases"].__setitem__(5, m["cases"][0])),
                        ("case_0000.npz", "listed twice")),
    "path_escape_up": (_escape_up, ("'../x.npz'", "outside")),
    "path_escape_absolute": (_escape_absolute, ("case 0", "absolute path")),
    "path_escape_symlink": (_escape_symlink, ("'case_0000.npz'", "outside")),
    "missing_sha256": (_edit(_delete("sha256")), ("case 2", "'sha256' is missing")),
    "missing_file": (_edit(_delete("file")), ("case 2", "'file' is missing")),
    "missing_sizes": (_edit(_delete("sizes")), ("case_0002.npz", "'sizes' is missing")),
    "missing_bias": (_edit(_delete("bias")), ("case_0002.npz", "'bias' is missing")),
    "missing_dtype": (_edit(_delete("dtype")), ("case_0002.npz", "'dtype' is missing")),
    "bias_a_string": (_edit(_set("bias", "yes")), ("'bias' is 'yes'", "true or false")),
    "sizes_a_string": (_edit(_set("sizes", "3,2")), ("'sizes' is '3,2'",)),
    "sizes_wrong_length": (_edit(_set("sizes", [3])), ("'sizes' is [3]",)),
    "sizes_zero": (_edit(lambda m: m["cases"][2].update(sizes=[0] * len(m["cases"][2]["sizes"]))),
                   ("'sizes' is [0",)),
    "unknown_dtype": (_edit(_set("dtype", "float16")), ("unknown dtype 'float16'",)),
    "unknown_activation": (_edit(_set("activations", ["swishy"])),
                           ("unknown activation 'swishy'",)),
    "unknown_loss": (_edit(_set("loss", "hinge")), ("unknown loss 'hinge'",)),
    "unknown_reduction": (_edit(_set("reduction", "max")), ("unknown reduction 'max'",)),
    "layout_in_out": (_edit(_set("layout", "in_out")), ("layout 'in_out'",)),
    "bad_json": (_raw(b'{"schema": "bpref-vectors/2", "count": 6, "cases": ['),
                 ("not valid JSON",)),
    "not_utf8": (_raw(b'{"schema": "\xff"}'), ("not valid JSON",)),
    "a_list": (_raw(b"[]"), ("schema None",)),
    "old_schema": (_edit(lambda m: m.update(schema="bpref-vectors/1")), ("older bpref",)),
    "npz_missing_x": (_rewrite_case(lambda a: a.pop("x")), ("case_0001.npz", "'x'")),
    "npz_missing_dW1": (_rewrite_case(lambda a: a.pop("dW1")),
                        ("case_0001.npz", "'dW1' is missing")),
    "npz_wrong_shape": (_rewrite_case(lambda a: a.update(t=a["t"][:, :0])),
                        ("case_0001.npz", "'t' has shape")),
    "npz_changed": (lambda copy, golden, tmp_path: (copy / "case_0003.npz").write_bytes(
        (golden / "case_0004.npz").read_bytes()), ("case_0003.npz", "sha256")),
}


@pytest.mark.parametrize("name", sorted(TAMPER))
def test_tampered_manifest_is_refused_with_exit_2(name, golden, foreign, tmp_path, capsys):
  tamper, phrases = TAMPER[name]
  copy = _copy(golden, tmp_path)
  tamper(copy, golden, tmp_path)
  _refused(["check", copy, foreign], capsys, *phrases)
  with pytest.raises(vectors.VectorsError):
    vectors.check(copy, foreign)


def test_a_consistent_edit_is_caught_only_by_the_manifest_sha256(golden, foreign, tmp_path,
                                                                   capsys):
  digest = _hexdigest(golden / "manifest.json")
  copy = _copy(golden, tmp_path)
  manifest = _manifest(copy)
  manifest["cases"] = manifest["cases"][:2]
  manifest["count"] = 2
  _write_manifest(copy, manifest)
  assert vectors.main(["check", str(copy), str(foreign)]) == 0
  assert capsys.readouterr().out.strip().splitlines()[-1] == "PASS: 2 of 2 cases"
  _refused(["check", copy, foreign, "--expect-manifest", digest], capsys, digest,
           "not the expected")
  with pytest.raises(vectors.VectorsError, match="not the expected"):
    vectors.check(copy, foreign, expect_manifest=digest)
  _refused(["check", copy, foreign, "--expect-manifest", "abc123"], capsys, "64 hexadecimal")


def test_a_result_file_outside_results_is_refused(golden, foreign, tmp_path, capsys):
  results = _copy(foreign, tmp_path)
  outside = tmp_path / "elsewhere.npz"
  outside.write_bytes((foreign / "case_0000.npz").read_bytes())
  os.remove(results / "case_0000.npz")
  os.symlink(outside, results / "case_0000.npz")
  _refused(["check", golden, results], capsys, "case_0000.npz", "outside")


def test_tampered_file_is_rejected(golden, foreign, tmp_path, capsys):
  copy = _copy(golden, tmp_path)
  path = copy / "case_0002.npz"
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF
  path.write_bytes(bytes(data))
  _refused(["check", copy, foreign], capsys, "case_0002.npz", "does not match")


def test_edited_and_rehashed_vectors_are_rejected(golden, foreign, tmp_path):
  copy = _copy(golden, tmp_path)
  path = copy / "case_0001.npz"
  with np.load(path, allow_pickle=False) as data:
    arrays = {k: data[k] for k in data.files}
  arrays["dW1"] = arrays["dW1"] * 2
  with open(path, "wb") as fh:
    np.savez(fh, **arrays)
  manifest = _manifest(copy)
  manifest["cases"][1]["sha256"] = _hexdigest(path)
  _write_manifest(copy, manifest)
  with pytest.raises(vectors.VectorsError, match="not bpref's"):
    vectors.check(copy, foreign)


def test_pickled_arrays_are_refused_even_with_a_matching_hash(golden, tmp_path):
  copy = _copy(golden, tmp_path)
  path = copy / "case_0000.npz"
  with open(path, "wb") as fh:
    np.savez(fh, x=np.array([{"evil": 1}], dtype=object))
  manifest = _manifest(copy)
  manifest["cases"][0]["sha256"] = _hexdigest(path)
  _write_manifest(copy, manifest)
  with pytest.raises(vectors.VectorsError, match="pickled"):
    vectors.check(copy, copy)


def test_missing_or_foreign_manifest_is_a_clear_error(tmp_path, capsys):
  _refused(["check", tmp_path, tmp_path], capsys, "manifest.json", "missing")
  (tmp_path / "manifest.json").write_text(json.dumps({"schema": "other/9"}))
  _refused(["check", tmp_path, tmp_path], capsys, "schema 'other/9'")
  assert vectors.main([]) == 2


# ---------------------------------------------------------------- bad export options


def test_export_to_a_file_or_an_impossible_path_is_a_clear_error(tmp_path, capsys):
  a_file = tmp_path / "a_file"
  a_file.write_text("not a directory")
  _refused(["export", a_file, "--cases", "1"], capsys, str(a_file), "not a directory")
  assert a_file.read_text() == "not a directory"
  _refused(["export", a_file / "sub", "--cases", "1"], capsys, str(a_file / "sub"),
           "cannot create")


@pytest.mark.parametrize("argv, phrase", [
    (["--max-depth", "0"], "max_depth must be an integer >= 1"),
    (["--cases", "0"], "cases must be an integer >= 1"),
    (["--seed", "-1"], "seed must be an integer >= 0"),
    (["--max-depth", "1000000000"], "max_depth must be an integer >= 1 and <= 64"),
    (["--cases", "1000000"], "cases must be an integer >= 1 and <= 100000"),
    (["--losses", "hinge"], "unknown loss 'hinge'"),
    (["--activations", "tanh,softmax"], "softmax is allowed only in the output layer"),
])
def test_bad_export_options_are_clear_errors_before_anything_is_written(argv, phrase, tmp_path,
                                                                        capsys):
  _refused(["export", tmp_path / "out"] + argv, capsys, phrase)
  assert not (tmp_path / "out").exists()


def test_a_loss_the_drawn_output_layers_never_suit_is_a_clear_error(tmp_path, capsys):
  argv = ["--losses", "cross_entropy", "--activations", "tanh", "--cases", "2"]
  _refused(["export", tmp_path / "out"] + argv, capsys,
           "0 of 2 cases found in 100 draws: 100 drew an output activation their loss does "
           "not take")
