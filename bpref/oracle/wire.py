"""The bpref-wire format: messages between bpref and a candidate in any language.

A message is one header line, a JSON object encoded in UTF-8 and ended by ``\\n``,
followed by the raw bytes of the arrays its ``"arrays"`` entry lists, in that order:

  {"type": "case", ..., "arrays": [{"name": "W1", "dtype": "float64", "shape": [4, 3]}, ...]}\\n
  <W1: 4 * 3 float64, little-endian, row-major><b1 ...>...

An array of shape (d_1, ..., d_k) and dtype float64 or int64 (float32) takes 8 (4)
d_1 ... d_k bytes, entries in row-major (C) order; shape [] is a scalar, one entry.
Nothing separates the arrays, and nothing follows the last one. docs/protocol.md gives
every message; this module reads and writes them and knows nothing about processes
(``bpref.oracle.exec`` runs the candidate).

Version 1 carries whole networks (a "case", answered by "grads"). Version 2 adds one
operation's backward (an "op" message, answered by "grads" holding the op's outputs), the
"ops" a client declares in its hello, and int64 arrays for an op's integer arguments
(token ids, class labels). A client answers bpref's hello with the version it speaks.

bpref writes compact headers (no spaces, names of letters, digits and ``_`` only),
so a client in C can find a key by searching for ``"key":``. What the candidate
writes is read with a full JSON parser.
"""

from __future__ import annotations

import json
import math

import numpy as np

PROTOCOL = "bpref-wire"
VERSION = 2
"""The highest protocol version this bpref speaks (docs/protocol.md); its hello says it."""

VERSIONS = (1, 2)
"""The versions a candidate may answer with: 1, networks only; 2, networks and ops."""

DTYPES = {"float64": np.dtype("<f8"), "float32": np.dtype("<f4"), "int64": np.dtype("<i8")}
"""The dtypes an array may have on the wire, little-endian. int64 is for an op's integer
arguments (version 2); every gradient is float64 or float32 (``FLOATS``)."""

FLOATS = ("float64", "float32")
"""The dtypes of a network's arrays, of a case's and of any gradient."""

MAX_HEADER = 1 << 16
"""Bytes a header line may take, its newline included."""

MAX_ARRAY_BYTES = 1 << 30
"""Bytes all the arrays of one message may take together."""


class WireError(ValueError):
  """A message that does not follow the format; the text says what came and what was expected."""


def shown(data: bytes, limit: int = 80) -> str:
  """The first ``limit`` bytes of ``data`` as a Python bytes literal, for messages."""
  text = repr(bytes(data[:limit]))
  return text + (f" ... ({len(data)} bytes)" if len(data) > limit else "")


def header_line(header: dict) -> bytes:
  """The header as bpref writes it: compact JSON, one line."""
  return json.dumps(header, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def encode(header: dict, arrays=()) -> bytes:
  """One message: ``header`` with an ``"arrays"`` entry for ``arrays``, then their bytes.

  Args:
    header: the message's keys ("type" and the rest), without "arrays".
    arrays: (name, array) pairs; each array float64, float32 or int64, any shape.
  """
  entries, payload = [], []
  for name, arr in arrays:
    arr = np.asarray(arr)
    if arr.dtype.name not in DTYPES:
      raise TypeError(f"array {name} has dtype {arr.dtype}; the wire carries float64, float32 or "
                      "int64")
    entries.append({"name": name, "dtype": arr.dtype.name, "shape": list(arr.shape)})
    payload.append(np.ascontiguousarray(arr, DTYPES[arr.dtype.name]).tobytes())
  head = dict(header)
  if arrays or "arrays" not in head:
    head["arrays"] = entries
  return header_line(head) + b"".join(payload)


def parse_header(line: bytes) -> dict:
  """The header object of one line (its newline stripped or not); WireError if it is not one."""
  try:
    header = json.loads(bytes(line).decode("utf-8"))
  except UnicodeDecodeError:
    raise WireError(f"the header line is not UTF-8 text: {shown(line)}") from None
  except (json.JSONDecodeError, RecursionError):
    raise WireError(f"the header line is not a JSON object: {shown(line)}") from None
  if not isinstance(header, dict):
    raise WireError(f"the header line is JSON but not an object ({{...}}): {shown(line)}")
  if not isinstance(header.get("type"), str):
    raise WireError(f"the header has no \"type\" string: {shown(line)}")
  return header


def array_layout(header: dict) -> list:
  """[(name, dtype, shape, nbytes)] for the header's "arrays" entry; WireError when malformed."""
  entries = header.get("arrays", [])
  if not isinstance(entries, list):
    raise WireError(f"\"arrays\" is {type(entries).__name__}; expected a list of "
                    "{\"name\", \"dtype\", \"shape\"} objects")
  out, total = [], 0
  for i, e in enumerate(entries):
    if not isinstance(e, dict) or not isinstance(e.get("name"), str):
      raise WireError(f"arrays[{i}] is {json.dumps(e)[:80]}; expected an object "
                      "{\"name\": str, \"dtype\": \"float64\" or \"float32\", \"shape\": [ints]}")
    name, dtype, shape = e["name"], e.get("dtype"), e.get("shape")
    if dtype not in DTYPES:
      raise WireError(f"array {name} has dtype {json.dumps(dtype)}; the wire carries \"float64\" "
                      "or \"float32\" (and \"int64\" for an op's integer arguments)")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool)
                                              and d >= 0 for d in shape):
      raise WireError(f"array {name} has shape {json.dumps(shape)[:80]}; expected a list of "
                      "integers >= 0 ([] for a scalar)")
    nbytes = math.prod(shape) * DTYPES[dtype].itemsize
    total += nbytes
    if total > MAX_ARRAY_BYTES:
      raise WireError(f"the arrays of one message would take {total} bytes; at most "
                      f"{MAX_ARRAY_BYTES} are read")
    out.append((name, dtype, tuple(shape), nbytes))
  return out


def payload_size(layout) -> int:
  return sum(n for *_, n in layout)


def decode_arrays(layout, payload: bytes) -> dict:
  """{name: array} from the payload bytes of a message (native byte order, writable copies)."""
  out, at = {}, 0
  for name, dtype, shape, nbytes in layout:
    arr = np.frombuffer(payload, DTYPES[dtype], count=nbytes // DTYPES[dtype].itemsize, offset=at)
    out[name] = arr.astype(DTYPES[dtype].newbyteorder("="), copy=True).reshape(shape)
    at += nbytes
  return out


def read_messages(data: bytes) -> list:
  """Every message in ``data`` (a file's contents), as (header, {name: array}); WireError else."""
  out, at = [], 0
  while at < len(data):
    end = data.find(b"\n", at, at + MAX_HEADER)
    if end < 0:
      raise WireError(f"at byte {at}: no header line ends within {MAX_HEADER} bytes: "
                      f"{shown(data[at:])}")
    header = parse_header(data[at:end])
    layout = array_layout(header)
    size = payload_size(layout)
    if end + 1 + size > len(data):
      raise WireError(f"at byte {at}: the {header['type']} message lists {size} bytes of arrays "
                      f"but only {len(data) - end - 1} follow")
    out.append((header, decode_arrays(layout, data[end + 1:end + 1 + size])))
    at = end + 1 + size
  return out


# ---------------------------------------------------------------- bpref's messages

def hello() -> bytes:
  """bpref's hello: the protocol and the highest version it speaks. The candidate answers with
  its own (``read_hello``): the version it speaks and what it implements; each case or op
  message then says all it needs."""
  return header_line({"type": "hello", "protocol": PROTOCOL, "version": VERSION})


BYE = header_line({"type": "bye"})


def case_message(case, layout: str, ident: int) -> bytes:
  """One case: its sizes, names and arrays W1, b1, ..., WL, bL, x, t (W_l in ``layout``).

  ``case`` is a ``spec.Case`` (W_l of shape (n_l, n_{l-1})); with layout "in_out" each W_l
  is sent transposed, (n_{l-1}, n_l). The biases are left out when ``case.biases`` is None.
  """
  arrays = []
  for l, W in enumerate(case.weights, start=1):
    arrays.append((f"W{l}", W.T if layout == "in_out" else W))
    if case.biases is not None:
      arrays.append((f"b{l}", case.biases[l - 1]))
  arrays += [("x", case.x), ("t", case.t)]
  a = case.arch
  return encode({"type": "case", "id": ident, "dtype": case.dtype, "layout": layout,
                 "reduction": case.reduction, "loss": a.loss, "activations": list(a.activations),
                 "sizes": list(a.sizes), "batch": a.batch, "bias": case.biases is not None},
                arrays)


FEATURES = ("activations", "losses", "dtypes", "layouts", "reductions")
"""The lists of names a candidate's hello declares for networks (all of them in version 1)."""

NETWORK_FEATURES = ("activations", "losses", "layouts", "reductions")
"""The lists a network check needs, which a version-2 client of ops only leaves out."""


def _names(header: dict, key: str, required: bool) -> list:
  declared = header.get(key, None if required else [])
  if not isinstance(declared, list) or (required and not declared) or \
      not all(isinstance(v, str) for v in declared):
    raise WireError(f"the candidate's hello has {key} = {json.dumps(declared)[:80]}; expected a "
                    f"{'non-empty ' if required else ''}list of names (docs/protocol.md)")
  return declared


def read_hello(header: dict) -> dict:
  """What a candidate's hello declares: {"version": 1 or 2, "activations": [...], ...,
  "ops": [...], "no_bias": bool, "name": str}; WireError for a hello that is malformed or of
  a version this bpref does not speak.

  Version 1 declares every list of ``FEATURES``, none empty, and no ops. Version 2 declares
  its dtypes, and may leave out the network lists (a client of ops only) or the ops (a
  client of networks only); an absent list reads as [].
  """
  if header.get("type") != "hello":
    raise WireError(f"the candidate's first message is {json.dumps(header)[:120]}; expected its "
                    "hello, {\"type\":\"hello\",\"version\":2,...} (docs/protocol.md)")
  version = header.get("version")
  if version not in VERSIONS or isinstance(version, bool):
    raise WireError(f"the candidate speaks {PROTOCOL} version {json.dumps(version)}; this bpref "
                    f"speaks versions {' and '.join(map(str, VERSIONS))} (docs/protocol.md)")
  out = {"version": version}
  for key in FEATURES:
    out[key] = _names(header, key, required=version == 1 or key == "dtypes")
  out["ops"] = _names(header, "ops", required=False) if version >= 2 else []
  no_bias = header.get("no_bias", False)
  if not isinstance(no_bias, bool):
    raise WireError(f"the candidate's hello has no_bias = {json.dumps(no_bias)[:40]}; expected "
                    "true or false")
  out["no_bias"] = no_bias
  out["name"] = str(header.get("name", ""))[:200]
  return out


def check_networks(features: dict) -> None:
  """Refuse a network check of a client that declares no networks (a version-2 client of ops)."""
  missing = [k for k in NETWORK_FEATURES if not features[k]]
  if missing:
    ops = f" it declares ops {', '.join(features['ops'])}: check one with --op KIND, or" \
        if features["ops"] else ""
    raise WireError(f"the candidate's hello declares no {', '.join(missing)}, which a network "
                    f"check needs;{ops} declare them in its hello (docs/protocol.md)")


def check_covers(features: dict, spec) -> None:
  """Refuse a check (``Spec``) asking for more than the candidate declares (``read_hello``).

  Raises WireError naming what is missing and the options that narrow the check to what the
  candidate declared.
  """
  asked = {"activations": (list(spec.activations), "--activations"),
           "losses": (list(spec.losses), "--losses"),
           "dtypes": ([spec.dtype], "--dtype"), "layouts": ([spec.layout], "--layout"),
           "reductions": ([spec.reduction], "--reduction")}
  for key, (wanted, option) in asked.items():
    declared = features[key]
    missing = [w for w in wanted if w not in declared]
    if missing:
      keep = ",".join(w for w in wanted if w in declared) or declared[0]
      raise WireError(f"the check asks for {key} {', '.join(missing)}, which the candidate does not "
                      f"declare (it declares {', '.join(declared)}); pass {option} {keep}, or "
                      "implement them and declare them in its hello")
  if not spec.bias and not features["no_bias"]:
    raise WireError("the check asks for layers without biases (--no-bias), and the candidate's "
                    "hello does not declare \"no_bias\": true")


def grads_result(header: dict, arrays: dict, case) -> list:
  """The candidate's reply as the oracle's result [dW, db] or [dW, db, loss]; WireError else.

  ``dW`` holds dW1..dWL in order, ``db`` db1..dbL (None without biases), as the candidate
  sent them (shape and dtype are judged by ``judge``, not here).
  """
  L = case.arch.depth
  bias = case.biases is not None
  names = [f"dW{l}" for l in range(1, L + 1)] + ([f"db{l}" for l in range(1, L + 1)] if bias else [])
  _floats_only(header)
  listed = [e.get("name") for e in header.get("arrays", [])]
  extra = [n for n in listed if n not in names and n != "loss"]
  if extra or len(set(listed)) != len(listed):
    what = (f"unknown array(s) {', '.join(map(str, extra))}" if extra
            else "an array listed twice")
    raise WireError(f"the grads reply has {what}; for this case (L = {L}) it carries "
                    f"{', '.join(names)} and optionally loss")
  missing = [n for n in names if n not in arrays]
  if missing:
    raise WireError(f"the grads reply lacks {', '.join(missing)}; for this case (L = {L}) it "
                    f"carries {', '.join(names)} and optionally loss")
  dW = [arrays[f"dW{l}"] for l in range(1, L + 1)]
  db = [arrays[f"db{l}"] for l in range(1, L + 1)] if bias else None
  if "loss" in arrays:
    return [dW, db, arrays["loss"]]
  return [dW, db]


def _floats_only(header: dict) -> None:
  for e in header.get("arrays", []):
    if e.get("dtype") not in FLOATS:
      raise WireError(f"array {e.get('name')} has dtype {json.dumps(e.get('dtype'))}; a grads reply "
                      "carries \"float64\" or \"float32\" arrays")


# ---------------------------------------------------------------- version 2: one operation

def op_message(ident: int, head: dict, args) -> bytes:
  """One op message: ``head``'s keys (kind, name, dtype, layout, takes, options), then the
  argument names in order ("args"), those that are None ("none"), and the arrays.

  Args:
    ident: the message's id.
    head: {"kind", "name", "dtype", "layout", "takes", "options": {...}}, in that order.
    args: (name, value) pairs in the candidate's argument order; a value is an array
      (float64, float32 or int64), None, or a number, which goes into "options" under its
      name (attention's heads).
  """
  options, arrays, none = dict(head.get("options", {})), [], []
  for name, value in args:
    if value is None:
      none.append(name)
    elif isinstance(value, np.ndarray):
      arrays.append((name, value))
    else:
      options[name] = value
  header = {"type": "op", "id": ident, **head, "options": options,
            "args": [name for name, _ in args], "none": none}
  return encode(header, arrays)


def op_result(header: dict, arrays: dict, names, loss: bool):
  """The reply to an op message as the candidate's return value: the one array, or the list
  of arrays in ``names`` order; [loss, gradient] when it sent a scalar ``loss`` too (``loss``:
  the op is a loss, whose candidate may return its value). WireError for unknown, missing or
  repeated names or a dtype other than float64 or float32."""
  _floats_only(header)
  allowed = list(names) + (["loss"] if loss else [])
  listed = [e.get("name") for e in header.get("arrays", [])]
  extra = [n for n in listed if n not in allowed]
  carries = f"{', '.join(names)}{' and optionally loss' if loss else ''}"
  if extra or len(set(listed)) != len(listed):
    what = (f"unknown array(s) {', '.join(map(str, extra))}" if extra
            else "an array listed twice")
    raise WireError(f"the grads reply has {what}; for this op it carries {carries}")
  missing = [n for n in names if n not in arrays]
  if missing:
    raise WireError(f"the grads reply lacks {', '.join(missing)}; for this op it carries {carries}")
  out = [arrays[n] for n in names]
  if "loss" in arrays:
    return [arrays["loss"], *out]
  return out[0] if len(out) == 1 else out


def op_names(kind: str, name) -> tuple:
  """The spellings in a hello's "ops" that declare op ``kind`` with ``name``: "kind" declares
  all its names, "kind:name" one."""
  return (kind,) if name is None else (kind, f"{kind}:{name}")


def op_missing(features: dict, kind: str, name, dtype: str) -> list:
  """What an op check of ``kind`` (``name``, ``dtype``) needs that the hello does not declare,
  each in the wire's spelling with what the hello says instead; [] when it declares all."""
  out = []
  if features["version"] < 2:
    out.append(f"\"version\":2 (it says {features['version']}; version 1 carries networks only)")
  if not set(op_names(kind, name)) & set(features["ops"]):
    listed = ", ".join(features["ops"]) if features["ops"] else "none"
    out.append(f"\"{op_names(kind, name)[-1]}\" in \"ops\" (it lists {listed})")
  if dtype not in features["dtypes"]:
    out.append(f"\"{dtype}\" in \"dtypes\" (it lists {', '.join(features['dtypes'])})")
  return out
