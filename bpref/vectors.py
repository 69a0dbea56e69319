"""Golden test vectors for backprop implementations in other languages.

``bpref vectors export DIR --cases N --seed S`` writes one ``.npz`` per case
(inputs and bpref's gradients) and ``manifest.json``; ``bpref vectors check DIR
RESULTS`` compares a foreign implementation's gradients, written in the same
format, and reports like ``bpref check``.

Case file ``case_0000.npz`` (plain numeric arrays, W_l of shape (n_l, n_{l-1})):
  inputs:   W1..WL, b1..bL (absent without biases), x (B, n_0), t (B, n_L)
  expected: loss (scalar), dW1..dWL, db1..dbL

Result file, same name under RESULTS: dW1..dWL, db1..dbL (and optionally loss),
listed in RESULTS/manifest.json as {"schema": "bpref-results/1", "files":
{"case_0000.npz": "<sha256>", ...}}.

The manifest of DIR: {"schema": "bpref-vectors/1", "seed", "bpref_version",
"cases": [{"file", "sha256", "sizes", "activations", "loss", "reduction",
"dtype", "bias", "layout": "out_in", "tolerance"}]}. Every file is hashed and
loaded with ``allow_pickle=False``: a changed, truncated or pickled file is
rejected with a message naming it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import zipfile

import numpy as np

SCHEMA = "bpref-vectors/1"
RESULTS_SCHEMA = "bpref-results/1"


class VectorsError(ValueError):
  """A vectors directory that cannot be trusted or read."""


def sha256(path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as fh:
    for block in iter(lambda: fh.read(1 << 16), b""):
      h.update(block)
  return h.hexdigest()


def _load(path, expected_sha) -> dict:
  """The arrays of one .npz after checking its hash; never unpickles."""
  if not os.path.isfile(path):
    raise VectorsError(f"{path}: missing (listed in the manifest)")
  digest = sha256(path)
  if digest != expected_sha:
    raise VectorsError(f"{path}: sha256 {digest[:16]}... does not match the manifest's "
                       f"{str(expected_sha)[:16]}...; the file changed after it was written: "
                       "export it again or fetch an intact copy")
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {k: np.asarray(data[k]) for k in data.files}
  except ValueError as exc:
    raise VectorsError(f"{path}: refused: it holds pickled objects ({exc}); vectors are plain "
                       "numeric arrays") from None
  except (zipfile.BadZipFile, OSError, EOFError) as exc:
    raise VectorsError(f"{path}: not a readable .npz file ({exc})") from None
  for k, v in arrays.items():
    if v.dtype.kind not in "fiu":
      raise VectorsError(f"{path}: array {k!r} has dtype {v.dtype}; only numeric arrays are allowed")
  return arrays


def _read_manifest(directory, schema) -> dict:
  path = os.path.join(directory, "manifest.json")
  try:
    with open(path) as fh:
      manifest = json.load(fh)
  except FileNotFoundError:
    raise VectorsError(f"{path}: missing; {directory} is not a bpref vectors directory") from None
  except json.JSONDecodeError as exc:
    raise VectorsError(f"{path}: not valid JSON ({exc})") from None
  if not isinstance(manifest, dict) or manifest.get("schema") != schema:
    raise VectorsError(f"{path}: schema {manifest.get('schema') if isinstance(manifest, dict) else None!r}"
                       f", expected {schema!r}")
  return manifest


def _arch_and_case(entry, arrays, spec):
  from bpref.oracle import spec as _spec

  L = len(entry["activations"])
  arch = _spec.Arch(tuple(entry["sizes"]), tuple(entry["activations"]), entry["loss"],
                    int(arrays["x"].shape[0]), 0)
  dtype = np.dtype(entry["dtype"])
  weights = tuple(arrays[f"W{l}"].astype(dtype) for l in range(1, L + 1))
  biases = tuple(arrays[f"b{l}"].astype(dtype) for l in range(1, L + 1)) if entry["bias"] else None
  case = _spec.Case(arch, weights, biases, arrays["x"].astype(dtype), arrays["t"].astype(dtype),
                    entry["reduction"], entry["dtype"])
  return arch, case


def export(directory, cases: int = 20, seed: int = 0, dtype: str = "float64", losses=None,
           activations=None, max_depth: int = 3) -> dict:
  """Write ``cases`` golden vectors and the manifest into ``directory``; return the manifest."""
  import jax

  from bpref import problems as _problems
  from bpref.oracle import judge as _judge
  from bpref.oracle import truth as _truth
  from bpref.oracle.spec import make_spec
  from bpref import __version__

  jax.config.update("jax_enable_x64", True)
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(seed)
  entries = []
  for i in range(cases):
    p = _problems.random_problem(rng, np.dtype(dtype), max_depth=max_depth, losses=losses,
                                 activations=activations)
    L = len(p.params)
    sizes = [int(p.params[0].W.shape[1])] + [int(layer.W.shape[0]) for layer in p.params]
    entry = {"file": f"case_{i:04d}.npz", "sizes": sizes,
             "activations": [layer.activation for layer in p.params], "loss": p.loss,
             "reduction": p.reduction, "dtype": dtype, "bias": p.params[0].b is not None,
             "layout": "out_in"}
    arrays = {f"W{l}": np.asarray(p.params[l - 1].W) for l in range(1, L + 1)}
    if entry["bias"]:
      arrays.update({f"b{l}": np.asarray(p.params[l - 1].b) for l in range(1, L + 1)})
    arrays.update(x=p.x, t=p.t)
    spec = make_spec(bias=entry["bias"], reduction=p.reduction, dtype=dtype)
    _, case = _arch_and_case(entry, arrays, spec)
    truth = _truth.compute(case)
    arrays["loss"] = np.asarray(truth.loss, np.float64)
    arrays.update({f"dW{l}": truth.dW[l - 1] for l in range(1, L + 1)})
    if entry["bias"]:
      arrays.update({f"db{l}": truth.db[l - 1] for l in range(1, L + 1)})
    path = os.path.join(directory, entry["file"])
    with open(path, "wb") as fh:
      np.savez(fh, **arrays)
    entry["tolerance"] = _judge.case_tolerance(case, truth)
    entry["sha256"] = sha256(path)
    entries.append(entry)
  manifest = {"schema": SCHEMA, "bpref_version": __version__, "seed": seed, "cases": entries,
              "error_measure": "||X - X_bpref||_F / ||M_X||_F per array, M_X the magnitude bound "
                               "of bpref.oracle.truth (see docs/oracle.md)"}
  with open(os.path.join(directory, "manifest.json"), "w") as fh:
    json.dump(manifest, fh, indent=2)
  return manifest


def write_results(directory, results: dict) -> None:
  """Write a foreign implementation's gradients: {"case_0000.npz": {"dW1": ..., "db1": ...}}."""
  os.makedirs(directory, exist_ok=True)
  files = {}
  for name, arrays in results.items():
    path = os.path.join(directory, name)
    with open(path, "wb") as fh:
      np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})
    files[name] = sha256(path)
  with open(os.path.join(directory, "manifest.json"), "w") as fh:
    json.dump({"schema": RESULTS_SCHEMA, "files": files}, fh, indent=2)


def check(directory, results_dir) -> dict:
  """Compare the results in ``results_dir`` with the vectors in ``directory``.

  Returns {"passed", "cases": [{"file", "passed", "errors", "tolerance", "message"}]}.
  Raises VectorsError for a missing, changed or unreadable file.
  """
  import jax

  from bpref.oracle import judge as _judge
  from bpref.oracle import truth as _truth
  from bpref.oracle.spec import make_spec

  jax.config.update("jax_enable_x64", True)
  manifest = _read_manifest(directory, SCHEMA)
  results_manifest = _read_manifest(results_dir, RESULTS_SCHEMA)
  rows = []
  for entry in manifest["cases"]:
    arrays = _load(os.path.join(directory, entry["file"]), entry["sha256"])
    spec = make_spec(bias=entry["bias"], reduction=entry["reduction"], dtype=entry["dtype"])
    _, case = _arch_and_case(entry, arrays, spec)
    truth = _truth.compute(case)
    L = len(entry["activations"])
    stored = _judge.errors_of([arrays[f"dW{l}"] for l in range(1, L + 1)],
                              [arrays[f"db{l}"] for l in range(1, L + 1)] if entry["bias"] else None,
                              truth)
    tol = _judge.case_tolerance(case, truth)
    if not max(stored.values()) <= tol:
      raise VectorsError(f"{entry['file']}: its expected gradients are not bpref's for its inputs; "
                         "the vectors were edited and rehashed, or come from another bpref version")
    if entry["file"] not in results_manifest["files"]:
      rows.append({"file": entry["file"], "passed": False, "errors": {}, "tolerance": tol,
                   "message": "no result for this case"})
      continue
    got = _load(os.path.join(results_dir, entry["file"]), results_manifest["files"][entry["file"]])
    rows.append(_compare(entry, case, truth, got, tol))
  return {"passed": all(r["passed"] for r in rows), "cases": rows}


def _compare(entry, case, truth, got, tol) -> dict:
  from bpref.oracle import judge as _judge

  L = len(entry["activations"])
  names = [f"dW{l}" for l in range(1, L + 1)] + ([f"db{l}" for l in range(1, L + 1)]
                                                 if entry["bias"] else [])
  row = {"file": entry["file"], "passed": False, "errors": {}, "tolerance": tol, "message": ""}
  missing = [n for n in names if n not in got]
  if missing:
    row["message"] = f"missing arrays {', '.join(missing)}"
    return row
  expected_shapes = {n: (truth.dW[int(n[2:]) - 1] if n.startswith("dW") else truth.db[int(n[2:]) - 1]).shape
                     for n in names}
  for n in names:
    if got[n].shape != expected_shapes[n]:
      transposed = " (transposed: vectors use W_l of shape (n_l, n_(l-1)))" \
          if got[n].shape == expected_shapes[n][::-1] else ""
      row["message"] = f"{n} has shape {got[n].shape}, expected {expected_shapes[n]}{transposed}"
      return row
    if not np.all(np.isfinite(got[n])):
      row["message"] = f"{n} contains NaN or inf"
      return row
  dW = [got[f"dW{l}"] for l in range(1, L + 1)]
  db = [got[f"db{l}"] for l in range(1, L + 1)] if entry["bias"] else None
  errors = _judge.errors_of(dW, db, truth)
  row["errors"] = errors
  bad = [k for k, e in errors.items() if not e <= tol]
  if "loss" in got:
    loss = float(np.asarray(got["loss"], np.float64).reshape(()))
    err = abs(loss - truth.loss) / (truth.mag_loss or 1.0)
    errors["loss"] = err
    if not err <= tol:
      bad.append("loss")
  row["passed"] = not bad
  worst = max(errors.values())
  row["message"] = ("correct" if not bad
                    else f"wrong in {', '.join(bad)} (worst {worst:.2e}, tolerance {tol:.1e})")
  return row


def _format(summary) -> str:
  lines = []
  for r in summary["cases"]:
    lines.append(f"{r['file']}: {'ok  ' if r['passed'] else 'FAIL'} {r['message']}")
  n_bad = sum(not r["passed"] for r in summary["cases"])
  lines.append(("PASS: every case matches bpref" if summary["passed"]
                else f"FAIL: {n_bad} of {len(summary['cases'])} cases differ from bpref"))
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="bpref vectors",
                                   description="Golden test vectors for other implementations.")
  sub = parser.add_subparsers(dest="command")
  ex = sub.add_parser("export", help="write golden vectors (.npz + manifest.json) into DIR")
  ex.add_argument("dir")
  ex.add_argument("--cases", type=int, default=20)
  ex.add_argument("--seed", type=int, default=0)
  ex.add_argument("--dtype", choices=("float64", "float32"), default="float64")
  ex.add_argument("--losses", help="comma-separated loss names (default: all)")
  ex.add_argument("--activations", help="comma-separated hidden activation names (default: all)")
  ex.add_argument("--max-depth", type=int, default=3)
  ck = sub.add_parser("check", help="compare RESULTS (same format) with the vectors in DIR")
  ck.add_argument("dir")
  ck.add_argument("results")
  ck.add_argument("--json", action="store_true")
  try:
    args = parser.parse_args(argv)
  except SystemExit as exc:
    return int(exc.code or 0) and 2
  if args.command is None:
    parser.print_usage(sys.stderr)
    return 2
  try:
    if args.command == "export":
      if args.cases < 1:
        raise VectorsError("--cases must be >= 1")
      split = (lambda s: tuple(v.strip() for v in s.split(",") if v.strip()) if s else None)
      manifest = export(args.dir, args.cases, args.seed, args.dtype, split(args.losses),
                        split(args.activations), args.max_depth)
      print(f"wrote {len(manifest['cases'])} cases and manifest.json to {args.dir}")
      return 0
    summary = check(args.dir, args.results)
  except ValueError as exc:  # VectorsError, and bad names in --losses / --activations
    print(f"bpref vectors: error: {exc}", file=sys.stderr)
    return 2
  print(json.dumps(summary, indent=2) if args.json else _format(summary))
  return 0 if summary["passed"] else 1
