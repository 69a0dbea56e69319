"""The bpref-wire format: messages between bpref and a candidate in any language.

A message is one header line, a JSON object encoded in UTF-8 and ended by ``\\n``,
followed by the raw bytes of the arrays its ``"arrays"`` entry lists, in that order:

  {"type": "case", ..., "arrays": [{"name": "W1", "dtype": "float64", "shape": [4, 3]}, ...]}\\n
  <W1: 4 * 3 float64, little-endian, row-major><b1 ...>...

An array of shape (d_1, ..., d_k) and dtype float64 (float32) takes 8 (4) d_1 ... d_k
bytes, entries in row-major (C) order; shape [] is a scalar, one entry. Nothing
separates the arrays, and nothing follows the last one. docs/protocol.md gives every
message; this module reads and writes them and knows nothing about processes
(``bpref.oracle.exec`` runs the candidate).

bpref writes compact headers (no spaces, names of letters, digits and ``_`` only),
so a client in C can find a key by searching for ``"key":``. What the candidate
writes is read with a full JSON parser.
"""

from __future__ import annotations

import json
import math

import numpy as np

PROTOCOL = "bpref-wire"
VERSION = 1
"""The protocol version this bpref speaks (docs/protocol.md)."""

DTYPES = {"float64": np.dtype("<f8"), "float32": np.dtype("<f4")}
"""The dtypes an array may have on the wire, little-endian."""

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
    arrays: (name, array) pairs; each array float64 or float32, any shape.
  """
  entries, payload = [], []
  for name, arr in arrays:
    arr = np.asarray(arr)
    if arr.dtype.name not in DTYPES:
      raise TypeError(f"array {name} has dtype {arr.dtype}; the wire carries float64 or float32")
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
                      "or \"float32\"")
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
  """bpref's hello: the protocol and its version. The candidate answers with its own
  (``check_hello``), declaring what it implements; each case then says all it needs."""
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
"""The lists of names a candidate's hello declares."""


def read_hello(header: dict) -> dict:
  """The features a candidate's hello declares: {"activations": [...], ..., "no_bias": bool,
  "name": str}; WireError for a hello that is malformed or of another protocol version."""
  if header.get("type") != "hello":
    raise WireError(f"the candidate's first message is {json.dumps(header)[:120]}; expected its "
                    "hello, {\"type\":\"hello\",\"version\":1,...} (docs/protocol.md)")
  version = header.get("version")
  if version != VERSION:
    raise WireError(f"the candidate speaks {PROTOCOL} version {json.dumps(version)}; this bpref "
                    f"speaks version {VERSION} (docs/protocol.md)")
  out = {}
  for key in FEATURES:
    declared = header.get(key)
    if not isinstance(declared, list) or not declared or \
        not all(isinstance(v, str) for v in declared):
      raise WireError(f"the candidate's hello has {key} = {json.dumps(declared)[:80]}; expected a "
                      "non-empty list of names (docs/protocol.md)")
    out[key] = declared
  no_bias = header.get("no_bias", False)
  if not isinstance(no_bias, bool):
    raise WireError(f"the candidate's hello has no_bias = {json.dumps(no_bias)[:40]}; expected "
                    "true or false")
  out["no_bias"] = no_bias
  out["name"] = str(header.get("name", ""))[:200]
  return out


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
