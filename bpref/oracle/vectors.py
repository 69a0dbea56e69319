"""Golden test vectors for backprop implementations in other languages.

``bpref vectors export DIR --cases N --seed S`` writes one ``.npz`` per case
(inputs and bpref's gradients) and ``manifest.json``, and prints the manifest's
sha256; ``bpref vectors check DIR RESULTS [--expect-manifest SHA]`` compares a
foreign implementation's gradients, written in the same format, and reports like
``bpref check``: "PASS: 20 of 20 cases".

Case file ``case_0000.npz`` (plain numeric arrays, W_l of shape (n_l, n_{l-1})):
  inputs:   W1..WL, b1..bL (absent without biases), x (B, n_0), t (B, n_L)
  expected: loss (scalar), dW1..dWL, db1..dbL

With ``--format wire`` each case is ``case_0000.wire`` instead, in the bpref-wire format
of ``bpref check --exec`` (docs/protocol.md): a ``case`` message (id = the case's index)
followed by an ``expected`` message holding loss, dW1..dWL, db1..dbL; the manifest is the
same, with ``"format": "wire"``, and hashes these files. A result may then be a
``.wire`` file holding the candidate's ``grads`` reply.

Result file, same name under RESULTS: dW1..dWL, db1..dbL (and optionally loss),
listed in RESULTS/manifest.json as {"schema": "bpref-results/1", "files":
{"case_0000.npz": "<sha256>", ...}}.

The manifest of DIR: {"schema": "bpref-vectors/2", "seed", "bpref_version",
"count", "cases": [{"file", "sha256", "sizes", "activations", "loss",
"reduction", "dtype", "bias", "layout": "out_in", "tolerance"}]}, where
``count`` is the number of cases exported. What ``check`` refuses (exit 2):

* a manifest whose sha256 is not the one given with ``--expect-manifest``;
* a manifest with a missing or mistyped key, an unknown name, no cases, or fewer
  (or more) cases than its ``count``;
* a file name that leaves DIR (``../x.npz``, an absolute path, a symlink out);
* a changed, truncated or pickled file (every file is hashed and loaded with
  ``allow_pickle=False``), or expected gradients that are not bpref's.

No vacuous cases: a case in which some layer's true gradient, dW_l or db_l, is
zero or within ``VACUOUS_MARGIN`` tolerances of zero (a softmax output with one
unit, whose gradients are all exactly 0; a relu layer dead on the whole batch)
would pass an implementation that returns zeros. ``export`` never writes one:
it draws again, deterministically. ``check`` reports one found in an older or
hand-made manifest as vacuous and does not count it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import zipfile

import numpy as np

SCHEMA = "bpref-vectors/2"
RESULTS_SCHEMA = "bpref-results/1"
DTYPES = ("float64", "float32")
FORMATS = ("npz", "wire")

VACUOUS_MARGIN = 100.0
"""An array checks something only if an all-zero answer misses it by more than this many
tolerances: e(0) = ||X_bpref||_F / ||M_X||_F > VACUOUS_MARGIN * tol (``bpref.oracle.judge``;
the same margin as ``bpref.oracle.search``). Then a bug that scales X by (1 + r) is caught
for any |r| above 1 / VACUOUS_MARGIN."""

_DRAWS_PER_CASE = 50
"""``export`` gives up after this many draws per requested case (all vacuous or unusable)."""

_ENTRY_KEYS = {"file": str, "sha256": str, "sizes": list, "activations": list, "loss": str,
               "reduction": str, "dtype": str, "bias": bool, "layout": str, "tolerance": float}
"""The keys of a manifest's case entry and their JSON types (``float`` admits integers)."""


class VectorsError(ValueError):
  """A vectors directory that cannot be trusted or read."""


def sha256(path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as fh:
    for block in iter(lambda: fh.read(1 << 16), b""):
      h.update(block)
  return h.hexdigest()


def _inside(directory, name, where) -> str:
  """The path of the file ``name`` a manifest lists, refused unless it lies inside ``directory``.

  ``where`` names the manifest entry for the message. Symlinks are resolved first, so
  a link that points out of ``directory`` is refused like ``../x.npz``.
  """
  if not isinstance(name, str) or not name or "\0" in name:
    raise VectorsError(f"{where}: file {name!r} is not a file name")
  if os.path.isabs(name) or os.path.splitdrive(name)[0]:
    raise VectorsError(f"{where}: file {name!r} is an absolute path; a manifest may name only "
                       f"files inside {directory}")
  root = os.path.realpath(directory)
  target = os.path.realpath(os.path.join(root, name))
  if target == root or os.path.commonpath([root, target]) != root:
    raise VectorsError(f"{where}: file {name!r} resolves to {target}, outside {directory}; a "
                       "manifest may name only files inside its directory")
  return os.path.join(directory, name)


def _load(path, expected_sha) -> dict:
  """The arrays of one .npz after checking its hash; never unpickles."""
  if not os.path.isfile(path):
    raise VectorsError(f"{path}: missing (listed in the manifest)")
  try:
    digest = sha256(path)
  except OSError as exc:
    raise VectorsError(f"{path}: cannot be read ({exc.strerror or exc})") from None
  if digest != expected_sha:
    raise VectorsError(f"{path}: sha256 {digest[:16]}... does not match the manifest's "
                       f"{str(expected_sha)[:16]}...; the file changed after it was written: "
                       "export it again or fetch an intact copy")
  if str(path).endswith(".wire"):
    return _load_wire(path)
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {k: np.asarray(data[k]) for k in data.files}
  except ValueError as exc:
    raise VectorsError(f"{path}: refused: it holds pickled objects ({exc}); vectors are plain "
                       "numeric arrays") from None
  except (zipfile.BadZipFile, OSError, EOFError) as exc:
    raise VectorsError(f"{path}: not a readable .npz file ({exc})") from None
  except AttributeError:  # np.load returns a bare array for a .npy file
    raise VectorsError(f"{path}: not an .npz archive of named arrays") from None
  for k, v in arrays.items():
    if v.dtype.kind not in "fiu":
      raise VectorsError(f"{path}: array {k!r} has dtype {v.dtype}; only numeric arrays are allowed")
  return arrays


def _load_wire(path) -> dict:
  """The arrays of a bpref-wire vectors or results file: its case, expected and grads messages."""
  from bpref.oracle import wire

  try:
    with open(path, "rb") as fh:
      messages = wire.read_messages(fh.read())
  except OSError as exc:
    raise VectorsError(f"{path}: cannot be read ({exc.strerror or exc})") from None
  except wire.WireError as exc:
    raise VectorsError(f"{path}: not a readable bpref-wire file: {exc}") from None
  arrays = {}
  for header, found in messages:
    if header["type"] not in ("case", "expected", "grads"):
      continue
    twice = sorted(set(found) & set(arrays))
    if twice:
      raise VectorsError(f"{path}: array {twice[0]!r} appears in two messages; a vectors file "
                         "holds one case and its expected gradients, a results file one reply")
    arrays.update(found)
  return arrays


def _read_manifest(directory, schema) -> dict:
  path = os.path.join(directory, "manifest.json")
  try:
    with open(path, "rb") as fh:
      manifest = json.loads(fh.read().decode("utf-8"))
  except FileNotFoundError:
    raise VectorsError(f"{path}: missing; {directory} is not a bpref vectors directory") from None
  except OSError as exc:
    raise VectorsError(f"{path}: cannot be read ({exc.strerror or exc})") from None
  except (UnicodeDecodeError, json.JSONDecodeError) as exc:
    raise VectorsError(f"{path}: not valid JSON ({exc})") from None
  except RecursionError:
    raise VectorsError(f"{path}: not valid JSON (nested too deeply)") from None
  found = manifest.get("schema") if isinstance(manifest, dict) else None
  if found != schema:
    hint = ("; it was written by an older bpref (no case count, no vacuity check): export "
            "the vectors again" if found == "bpref-vectors/1" else "")
    raise VectorsError(f"{path}: schema {found!r}, expected {schema!r}{hint}")
  return manifest


def _is(value, kind) -> bool:
  """Whether the JSON ``value`` has type ``kind``; bool is not a number, int counts as float."""
  if kind is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if kind is int:
    return isinstance(value, int) and not isinstance(value, bool)
  return isinstance(value, kind)


_JSON_NAMES = {str: "a string", list: "a list", bool: "true or false", float: "a number",
               int: "an integer", dict: "an object"}


def _check_manifest(path, manifest) -> None:
  """Refuse a manifest with a missing or mistyped key, no cases, or not ``count`` of them."""
  from bpref import activations as _activations
  from bpref import losses as _losses

  count = manifest.get("count")
  if "count" not in manifest:
    raise VectorsError(f"{path}: no 'count' of cases recorded; a manifest records how many "
                       "cases were exported, so a trimmed one can be told apart: export again")
  if not _is(count, int) or count < 1:
    raise VectorsError(f"{path}: 'count' is {count!r}; expected the number of cases exported, "
                       "an integer >= 1")
  cases = manifest.get("cases")
  if not isinstance(cases, list):
    raise VectorsError(f"{path}: 'cases' is {'missing' if cases is None else type(cases).__name__}"
                       "; expected a list of case entries")
  if not cases:
    raise VectorsError(f"{path}: 'cases' is empty but 'count' records {count}; refusing to pass "
                       "a manifest that checks nothing")
  if len(cases) != count:
    what = "trimmed" if len(cases) < count else "added to"
    raise VectorsError(f"{path}: lists {len(cases)} cases but 'count' records {count} exported; "
                       f"the manifest was {what} after export")
  seen = set()
  for i, entry in enumerate(cases):
    where = f"{path}: case {i}"
    if not isinstance(entry, dict):
      raise VectorsError(f"{where}: expected an object, got {type(entry).__name__}")
    if isinstance(entry.get("file"), str):
      where = f"{path}: case {i} ({entry['file']})"
    for key, kind in _ENTRY_KEYS.items():
      if key not in entry:
        raise VectorsError(f"{where}: key {key!r} is missing")
      if not _is(entry[key], kind):
        raise VectorsError(f"{where}: {key!r} is {entry[key]!r}; expected {_JSON_NAMES[kind]}")
    if entry["file"] in seen:
      raise VectorsError(f"{where}: listed twice; each case file may be counted once")
    seen.add(entry["file"])
    acts = entry["activations"]
    if not acts or not all(isinstance(a, str) for a in acts):
      raise VectorsError(f"{where}: 'activations' is {acts!r}; expected a non-empty list of names")
    for name in acts:
      if name not in _activations.ACTIVATIONS:
        raise VectorsError(f"{where}: unknown activation {name!r}; valid names: "
                           f"{', '.join(_activations.ACTIVATIONS)}")
    sizes = entry["sizes"]
    if (len(sizes) != len(acts) + 1 or not all(_is(n, int) and n >= 1 for n in sizes)):
      raise VectorsError(f"{where}: 'sizes' is {sizes!r}; expected {len(acts) + 1} integers "
                         f">= 1 (n_0 and one per activation)")
    if entry["loss"] not in _losses.LOSSES:
      raise VectorsError(f"{where}: unknown loss {entry['loss']!r}; valid names: "
                         f"{', '.join(_losses.LOSSES)}")
    if entry["reduction"] not in _losses.REDUCTIONS:
      raise VectorsError(f"{where}: unknown reduction {entry['reduction']!r}; expected one of "
                         f"{', '.join(_losses.REDUCTIONS)}")
    if entry["dtype"] not in DTYPES:
      raise VectorsError(f"{where}: unknown dtype {entry['dtype']!r}; expected one of "
                         f"{', '.join(DTYPES)}")
    if entry["layout"] != "out_in":
      raise VectorsError(f"{where}: layout {entry['layout']!r}; bpref vectors use 'out_in' "
                         "(W_l of shape (n_l, n_(l-1)))")


def _check_arrays(path, entry, arrays, *, expected: bool) -> None:
  """Refuse a case file whose arrays are missing or do not have the manifest's shapes."""
  sizes, L = entry["sizes"], len(entry["activations"])
  B = arrays["x"].shape[0] if "x" in arrays and arrays["x"].ndim == 2 else None
  if B is None or B < 1:
    got = f"has shape {arrays['x'].shape}" if "x" in arrays else "is missing"
    raise VectorsError(f"{path}: array 'x' {got}; expected shape (B, {sizes[0]}) with B >= 1")
  shapes = {"x": (B, sizes[0]), "t": (B, sizes[-1])}
  for l in range(1, L + 1):
    shapes[f"W{l}"] = (sizes[l], sizes[l - 1])
    if entry["bias"]:
      shapes[f"b{l}"] = (sizes[l],)
    if expected:
      shapes[f"dW{l}"] = (sizes[l], sizes[l - 1])
      if entry["bias"]:
        shapes[f"db{l}"] = (sizes[l],)
  for name, shape in shapes.items():
    if name not in arrays:
      raise VectorsError(f"{path}: array {name!r} is missing; the manifest's sizes {sizes} "
                         f"need it with shape {shape}")
    if arrays[name].shape != shape:
      raise VectorsError(f"{path}: array {name!r} has shape {arrays[name].shape}; the manifest's "
                         f"sizes {sizes} need {shape}")
    if arrays[name].dtype.kind != "f" or not np.all(np.isfinite(arrays[name])):
      raise VectorsError(f"{path}: array {name!r} must hold finite floating-point numbers")


def _content_seed(arrays) -> int:
  """A seed that names the inputs, so the oracle's truth cache (keyed by Arch) never mixes cases."""
  h = hashlib.sha256()
  for name in sorted(k for k in arrays if not k.startswith("d") and k != "loss"):
    a = np.ascontiguousarray(arrays[name])
    h.update(f"{name}{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
  return int.from_bytes(h.digest()[:7], "big")


def _case(entry, arrays):
  """The oracle's ``Case`` for one manifest entry and its input arrays, in the entry's dtype."""
  from bpref.oracle import spec as _spec

  L = len(entry["activations"])
  arch = _spec.Arch(tuple(entry["sizes"]), tuple(entry["activations"]), entry["loss"],
                    int(arrays["x"].shape[0]), _content_seed(arrays))
  dtype = np.dtype(entry["dtype"])
  weights = tuple(arrays[f"W{l}"].astype(dtype) for l in range(1, L + 1))
  biases = tuple(arrays[f"b{l}"].astype(dtype) for l in range(1, L + 1)) if entry["bias"] else None
  return _spec.Case(arch, weights, biases, arrays["x"].astype(dtype), arrays["t"].astype(dtype),
                    entry["reduction"], entry["dtype"])


def _truth(where, case):
  """bpref's truth on ``case``, refused when bpref cannot run it or its gradient is not finite."""
  from bpref.oracle import truth as _truth_module

  try:
    truth = _truth_module.compute(case)
  except (ValueError, TypeError) as exc:
    raise VectorsError(f"{where}: bpref cannot run this case: {exc}") from None
  arrays = list(truth.dW) + list(truth.db or ()) + [truth.loss]
  if not all(np.all(np.isfinite(a)) for a in arrays):
    raise VectorsError(f"{where}: bpref's loss or gradient is not finite on these inputs; the "
                       f"targets are not valid for {case.arch.loss} with a "
                       f"{case.arch.activations[-1]} output")
  return truth


def vacuous_arrays(truth, tol) -> list:
  """The arrays ("W1", "b2", ...) whose true gradient an all-zero answer would match.

  An array X is vacuous when e(0) = ||X_bpref||_F / ||M_X||_F <= VACUOUS_MARGIN * tol
  (the error measure of ``bpref.oracle.judge``; ||X_bpref||_F itself when M_X = 0).
  A case with any vacuous array cannot tell a right answer for that layer from none.
  """
  from bpref.oracle import judge as _judge

  zeros = _judge.errors_of([np.zeros_like(d) for d in truth.dW],
                           None if truth.db is None else [np.zeros_like(d) for d in truth.db],
                           truth)
  return [name for name, e in zeros.items() if not e > VACUOUS_MARGIN * tol]


MAX_CASES = 100_000
"""The most cases one export writes; layers per network are bounded as the oracle's
(``bpref.oracle.spec.MAX_DEPTH``)."""

SETTINGS = ("loss", "reduction", "bias", "dtype", "layout")
"""The settings a case's entry carries beside its sizes and activations."""


def settings(entries) -> dict:
  """{setting: the values the cases take, in order of first appearance}: what an implementation
  must read from each case's entry rather than assume (the loss's reduction, whether the layers
  have biases, ...)."""
  return {key: list(dict.fromkeys(entry[key] for entry in entries)) for key in SETTINGS}


def export(directory, cases: int = 20, seed: int = 0, dtype: str = "float64", losses=None,
           activations=None, max_depth: int = 3, fmt: str = "npz") -> dict:
  """Write ``cases`` golden vectors and the manifest into ``directory``; return the manifest.

  ``fmt`` "npz" writes ``case_0000.npz``, ...; "wire" writes ``case_0000.wire``, ... in the
  bpref-wire format (a case message, then an expected message; docs/protocol.md).

  Draws are skipped, deterministically, when a layer's true gradient is vacuous
  (``vacuous_arrays``) or the output activation is not the one the loss takes; the
  manifest's sha256 is ``sha256(directory/manifest.json)``.
  Raises VectorsError for bad options or a directory that cannot be written.
  """
  import jax

  from bpref import __version__
  from bpref import activations as _activations
  from bpref import losses as _losses
  from bpref import problems as _problems
  from bpref.oracle import judge as _judge
  from bpref.oracle import spec as _spec

  if not _is(cases, int) or not 1 <= cases <= MAX_CASES:
    raise VectorsError(f"cases must be an integer >= 1 and <= {MAX_CASES}; got {cases!r}")
  if not _is(max_depth, int) or not 1 <= max_depth <= _spec.MAX_DEPTH:
    raise VectorsError(f"max_depth must be an integer >= 1 and <= {_spec.MAX_DEPTH} (layers per "
                       f"network); got {max_depth!r}")
  if not _is(seed, int) or not 0 <= seed < 2**32:
    raise VectorsError(f"seed must be an integer >= 0 and < 2**32; got {seed!r}")
  if dtype not in DTYPES:
    raise VectorsError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
  if fmt not in FORMATS:
    raise VectorsError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
  for name in losses or ():
    _losses.get(name)  # a ValueError lists the valid names
  for name in activations or ():
    if _activations.get(name).name in _activations.OUTPUT_ONLY:
      raise VectorsError(f"activations: {name} is allowed only in the output layer; list hidden "
                         "activations only")
  jax.config.update("jax_enable_x64", True)
  if os.path.exists(directory) and not os.path.isdir(directory):
    raise VectorsError(f"{directory}: exists and is not a directory; give a directory, new or "
                       "existing")
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as exc:
    raise VectorsError(f"{directory}: cannot create the vectors directory "
                       f"({exc.strerror or exc}); give a directory, new or existing") from None
  rng = np.random.default_rng(seed)
  entries, draws, mismatched = [], 0, 0
  while len(entries) < cases:
    if draws >= _DRAWS_PER_CASE * cases:
      raise VectorsError(f"only {len(entries)} of {cases} cases found in {draws} draws: "
                         f"{mismatched} drew an output activation their loss does not take, the "
                         f"other {draws - len(entries) - mismatched} had a layer whose true "
                         "gradient is zero; allow more activations or losses")
    draws += 1
    p = _problems.random_problem(rng, np.dtype(dtype), max_depth=max_depth, losses=losses,
                                 activations=activations)
    required = _losses.get(p.loss).output
    if required is not None and p.params[-1].activation != required:
      mismatched += 1
      continue  # e.g. cross_entropy (needs softmax) after an output drawn from the activations
    L = len(p.params)
    sizes = [int(p.params[0].W.shape[1])] + [int(layer.W.shape[0]) for layer in p.params]
    entry = {"file": f"case_{len(entries):04d}.{fmt}", "sizes": sizes,
             "activations": [layer.activation for layer in p.params], "loss": p.loss,
             "reduction": p.reduction, "dtype": dtype, "bias": p.params[0].b is not None,
             "layout": "out_in"}
    arrays = {f"W{l}": np.asarray(p.params[l - 1].W) for l in range(1, L + 1)}
    if entry["bias"]:
      arrays.update({f"b{l}": np.asarray(p.params[l - 1].b) for l in range(1, L + 1)})
    arrays.update(x=p.x, t=p.t)
    case = _case(entry, arrays)
    truth = _truth(entry["file"], case)
    tol = _judge.case_tolerance(case, truth)
    if vacuous_arrays(truth, tol):
      continue  # e.g. a softmax output with one unit: every gradient is exactly 0
    arrays["loss"] = np.asarray(truth.loss, np.float64)
    arrays.update({f"dW{l}": truth.dW[l - 1] for l in range(1, L + 1)})
    if entry["bias"]:
      arrays.update({f"db{l}": truth.db[l - 1] for l in range(1, L + 1)})
    path = os.path.join(directory, entry["file"])
    try:
      with open(path, "wb") as fh:
        if fmt == "wire":
          fh.write(_wire_case(case, arrays, len(entries)))
        else:
          np.savez(fh, **arrays)
    except OSError as exc:
      raise VectorsError(f"{path}: cannot be written ({exc.strerror or exc})") from None
    entry["tolerance"] = tol
    entry["sha256"] = sha256(path)
    entries.append(entry)
  manifest = {"schema": SCHEMA, "bpref_version": __version__, "seed": seed, "count": len(entries),
              **({"format": "wire"} if fmt == "wire" else {}), "settings": settings(entries),
              "cases": entries,
              "error_measure": "||X - X_bpref||_F / ||M_X||_F per array, M_X the magnitude bound "
                               "of bpref.oracle.truth (see docs/oracle.md)"}
  try:
    with open(os.path.join(directory, "manifest.json"), "w") as fh:
      json.dump(manifest, fh, indent=2)
  except OSError as exc:
    raise VectorsError(f"{directory}/manifest.json: cannot be written ({exc.strerror or exc})") \
        from None
  return manifest


def _wire_case(case, arrays, index: int) -> bytes:
  """A wire vectors file: the case message, then the expected loss and gradients."""
  from bpref.oracle import wire

  L = case.arch.depth
  names = ["loss"] + [f"dW{l}" for l in range(1, L + 1)] + \
      ([f"db{l}" for l in range(1, L + 1)] if case.biases is not None else [])
  return wire.case_message(case, "out_in", index) + wire.encode(
      {"type": "expected", "id": index}, [(n, np.asarray(arrays[n], np.float64)) for n in names])


def write_results(directory, results: dict) -> None:
  """Write a foreign implementation's gradients: {"case_0000.npz": {"dW1": ..., "db1": ...}}.

  A name ending in ``.wire`` is written as a bpref-wire ``grads`` message (docs/protocol.md).
  """
  from bpref.oracle import wire

  os.makedirs(directory, exist_ok=True)
  files = {}
  for name, arrays in results.items():
    path = os.path.join(directory, name)
    with open(path, "wb") as fh:
      if name.endswith(".wire"):
        fh.write(wire.encode({"type": "grads", "id": 0}, [(k, np.asarray(v)) for k, v in arrays.items()]))
      else:
        np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})
    files[name] = sha256(path)
  with open(os.path.join(directory, "manifest.json"), "w") as fh:
    json.dump({"schema": RESULTS_SCHEMA, "files": files}, fh, indent=2)


def _manifest_digest(directory, expect_manifest) -> str:
  """sha256 of DIR/manifest.json, refused when it is not ``expect_manifest`` (if given)."""
  path = os.path.join(directory, "manifest.json")
  if expect_manifest is not None:
    want = str(expect_manifest).strip().lower()
    if len(want) != 64 or any(c not in "0123456789abcdef" for c in want):
      raise VectorsError(f"--expect-manifest must be a sha256, 64 hexadecimal digits as printed "
                         f"by 'bpref vectors export'; got {expect_manifest!r}")
  try:
    digest = sha256(path)
  except FileNotFoundError:
    raise VectorsError(f"{path}: missing; {directory} is not a bpref vectors directory") from None
  except OSError as exc:
    raise VectorsError(f"{path}: cannot be read ({exc.strerror or exc})") from None
  if expect_manifest is not None and digest != want:
    raise VectorsError(f"{path}: sha256 {digest} is not the expected {want}; the manifest is "
                       "not the one that was exported (changed, trimmed or replaced)")
  return digest


def check(directory, results_dir, *, expect_manifest: str | None = None) -> dict:
  """Compare the results in ``results_dir`` with the vectors in ``directory``.

  Args:
    expect_manifest: the sha256 printed by ``export``; the manifest must match it.

  Returns {"passed", "checked", "failed", "vacuous", "total", "manifest_sha256",
  "cases": [{"file", "counted", "passed", "errors", "tolerance", "message"}]}:
  ``checked`` cases were judged, ``failed`` of them differ, ``vacuous`` ones were
  not counted (``passed`` None), ``total`` is the manifest's count. ``passed`` is
  True only when every counted case matches.
  Raises VectorsError for a missing, changed, malformed or unreadable file, and when
  no case can be counted.
  """
  import jax

  from bpref.oracle import judge as _judge

  jax.config.update("jax_enable_x64", True)
  digest = _manifest_digest(directory, expect_manifest)
  path = os.path.join(directory, "manifest.json")
  manifest = _read_manifest(directory, SCHEMA)
  _check_manifest(path, manifest)
  results_manifest = _read_manifest(results_dir, RESULTS_SCHEMA)
  files = results_manifest.get("files")
  results_path = os.path.join(results_dir, "manifest.json")
  if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
    raise VectorsError(f"{results_path}: 'files' must be an object mapping each case file to "
                       "its sha256")
  rows = []
  for i, entry in enumerate(manifest["cases"]):
    case_path = _inside(directory, entry["file"], f"{path}: case {i}")
    arrays = _load(case_path, entry["sha256"])
    _check_arrays(case_path, entry, arrays, expected=True)
    case = _case(entry, arrays)
    truth = _truth(case_path, case)
    L = len(entry["activations"])
    stored = _judge.errors_of([arrays[f"dW{l}"] for l in range(1, L + 1)],
                              [arrays[f"db{l}"] for l in range(1, L + 1)] if entry["bias"] else None,
                              truth)
    tol = _judge.case_tolerance(case, truth)
    if not max(stored.values()) <= tol:
      raise VectorsError(f"{entry['file']}: its expected gradients are not bpref's for its inputs; "
                         "the vectors were edited and rehashed, or come from another bpref version")
    vacuous = vacuous_arrays(truth, tol)
    if vacuous:
      names = ", ".join("d" + n for n in vacuous)
      rows.append({"file": entry["file"], "counted": False, "passed": None, "errors": {},
                   "tolerance": tol,
                   "message": f"vacuous, not counted: bpref's {names} "
                              f"{'is' if len(vacuous) == 1 else 'are'} zero to within "
                              f"{VACUOUS_MARGIN:g} tolerances, so an all-zero answer would pass"})
      continue
    if entry["file"] not in files:
      rows.append({"file": entry["file"], "counted": True, "passed": False, "errors": {},
                   "tolerance": tol, "message": "no result for this case"})
      continue
    result_path = _inside(results_dir, entry["file"], f"{results_path}: {entry['file']}")
    got = _load(result_path, files[entry["file"]])
    rows.append(_compare(entry, truth, got, tol))
  counted = [r for r in rows if r["counted"]]
  if not counted:
    raise VectorsError(f"{path}: all {len(rows)} cases are vacuous (a layer's true gradient is "
                       "zero), so none can tell a right answer from zeros; export the vectors "
                       "again with this bpref")
  failed = sum(not r["passed"] for r in counted)
  return {"passed": failed == 0, "checked": len(counted), "failed": failed,
          "vacuous": len(rows) - len(counted), "total": len(rows), "manifest_sha256": digest,
          "cases": rows}


def _compare(entry, truth, got, tol) -> dict:
  from bpref.oracle import judge as _judge

  L = len(entry["activations"])
  names = [f"dW{l}" for l in range(1, L + 1)] + ([f"db{l}" for l in range(1, L + 1)]
                                                 if entry["bias"] else [])
  row = {"file": entry["file"], "counted": True, "passed": False, "errors": {}, "tolerance": tol,
         "message": ""}
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
    if got["loss"].size != 1:
      row["message"] = f"loss has shape {got['loss'].shape}, expected a scalar"
      return row
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
    mark = "skip" if not r["counted"] else "ok  " if r["passed"] else "FAIL"
    lines.append(f"{r['file']}: {mark} {r['message']}")
  n, total, vacuous = summary["checked"], summary["total"], summary["vacuous"]
  not_counted = (f" ({vacuous} of the manifest's {total} cases vacuous, not counted)"
                 if vacuous else "")
  lines.append(f"PASS: {n} of {n} cases{not_counted}" if summary["passed"]
               else f"FAIL: {summary['failed']} of {n} cases differ from bpref{not_counted}")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="bpref vectors",
                                   description="Golden test vectors for other implementations.")
  sub = parser.add_subparsers(dest="command")
  ex = sub.add_parser("export", help="write golden vectors (.npz or .wire + manifest.json) into "
                                     "DIR and print the manifest's sha256")
  ex.add_argument("dir")
  ex.add_argument("--cases", type=int, default=20, help="1 to 100000 (default 20)")
  ex.add_argument("--seed", type=int, default=0, help="0 to 2**32 - 1")
  ex.add_argument("--dtype", choices=DTYPES, default="float64")
  ex.add_argument("--losses", help="comma-separated loss names (default: all)")
  ex.add_argument("--activations", help="comma-separated hidden activation names (default: all)")
  ex.add_argument("--max-depth", type=int, default=3, help="1 to 64 (default 3)")
  ex.add_argument("--format", choices=FORMATS, default="npz",
                  help="npz: NumPy archives; wire: the bpref-wire format of bpref check --exec "
                       "(docs/protocol.md), for code that cannot run as a process")
  ck = sub.add_parser("check", help="compare RESULTS (same format) with the vectors in DIR")
  ck.add_argument("dir")
  ck.add_argument("results")
  ck.add_argument("--expect-manifest", metavar="SHA",
                  help="the manifest's sha256 as printed by export; refuse any other manifest")
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
      split = (lambda s: tuple(v.strip() for v in s.split(",") if v.strip()) if s else None)
      manifest = export(args.dir, args.cases, args.seed, args.dtype, split(args.losses),
                        split(args.activations), args.max_depth, args.format)
      digest = sha256(os.path.join(args.dir, "manifest.json"))
      varying = [f"{key} ({', '.join(map(str, values))})"
                 for key, values in manifest["settings"].items() if len(values) > 1]
      print(f"wrote {manifest['count']} cases and manifest.json to {args.dir}\n"
            + (f"the cases differ in {'; '.join(varying)}: read each case's entry in the "
               "manifest\n" if varying else "")
            + f"manifest sha256: {digest}\n"
            f"check with: bpref vectors check {args.dir} RESULTS --expect-manifest {digest}")
      return 0
    summary = check(args.dir, args.results, expect_manifest=args.expect_manifest)
  except ValueError as exc:  # VectorsError, and bad names in --losses / --activations
    print(f"bpref vectors: error: {exc}", file=sys.stderr)
    return 2
  except Exception as exc:  # never exit 1 (which means "the gradients differ") on a crash
    print(f"bpref vectors: error: unexpected {type(exc).__name__}: {exc}; this is a bpref bug, "
          "please report it with the vectors directory", file=sys.stderr)
    return 2
  print(json.dumps(summary, indent=2) if args.json else _format(summary))
  return 0 if summary["passed"] else 1
