"""Every kind of check through every way of running its candidate: kind x transport.

The transports are the candidate called in this process (a thread), in an isolated subprocess
(``isolate=True``, the CLI's default) and as a program over bpref-wire (``exec_command``). The
candidate is bpref's own answer (``bpref.oracle.ops.Reference``), right or with every output
1.001 times too large: whatever computes the answer, a transport must carry the arguments and
the answer faithfully, so the right one passes and the wrong one fails as a wrong gradient
(``numeric``), through every transport. The whole network has the same rows, its candidate
``bpref.grad``. The wire client frames its messages itself, as a program in another language
would (docs/protocol.md), and reads each op message back into the kind's arguments.
"""

from __future__ import annotations

import os
import shlex
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bpref
from bpref.oracle.ops import Reference, check_op, kinds, wire_ops

WRONG = 1.001
SMALL = dict(examples=3, seed=0, shrink_budget=4)

OPS = [(r.name, r.names[0] if r.names else None) for r in kinds.RECORDS if r.name != "block"]
"""Each op kind with its first name; the block, a composition of layer functions, is the one kind
that cannot be a program's op (``test_a_composition_is_refused_over_the_wire``)."""

CLIENT = r'''
import json, sys
import numpy as np
from bpref.oracle.ops import Reference, kinds

factor = float(sys.argv[1])
ops = sys.argv[2].split(",")
loud = sys.argv[3:] == ["loud"]
inp, out = sys.stdin.buffer, sys.stdout.buffer
DTYPES = {"float64": "<f8", "float32": "<f4", "int64": "<i8"}

def send(header, arrays=()):
  entries, payload = [], b""
  for name, a in arrays:
    a = np.ascontiguousarray(a)
    entries.append({"name": name, "dtype": a.dtype.name, "shape": list(a.shape)})
    payload += a.astype(a.dtype.newbyteorder("<")).tobytes()
  out.write(json.dumps(dict(header, arrays=entries)).encode() + b"\n" + payload)
  out.flush()

inp.readline()
send({"type": "hello", "version": 2, "dtypes": ["float64", "float32"], "ops": ops})
while True:
  line = inp.readline()
  if not line:
    sys.exit(0)
  h = json.loads(line)
  if h["type"] == "bye":
    sys.exit(0)
  if loud:
    sys.stderr.write("a line on stderr\n")
    sys.stderr.flush()
  arrays = {}
  for e in h["arrays"]:
    dt = np.dtype(DTYPES[e["dtype"]])
    count = int(np.prod(e["shape"]))
    arrays[e["name"]] = np.frombuffer(inp.read(count * dt.itemsize), dt).reshape(e["shape"])
  options = {k: v for k, v in h["options"].items() if k not in h["args"]}
  spec = kinds.make_spec(h["kind"], h["name"], dtype=h["dtype"], layout=h["layout"],
                         takes=h["takes"], **options)
  args = [arrays[n] if n in arrays else None if n in h["none"] else h["options"][n]
          for n in h["args"]]
  answer = Reference(spec, factor)(*args)
  names = kinds.of(spec).output_names(spec)
  answer = [answer] if len(names) == 1 else list(answer)
  send({"type": "grads", "id": h["id"]}, list(zip(names, answer)))
'''


@pytest.fixture(scope="module")
def client(tmp_path_factory):
  path = tmp_path_factory.mktemp("matrix") / "client.py"
  path.write_text(CLIENT)

  def command(factor, kind, name, loud=False):
    ops = f"{kind}:{name}" if name else kind
    return (f"{shlex.quote(sys.executable)} {shlex.quote(str(path))} {factor!r} {ops}"
            + (" loud" if loud else ""))

  return command


class Loud:
  """``Reference``'s answer after a line on each stream (picklable)."""

  def __init__(self, spec, factor):
    self.spec, self.factor = spec, factor

  def __call__(self, *args):
    os.write(1, b"a line on stdout\n")  # on the descriptors themselves, as C code writes
    os.write(2, b"a line on stderr\n")
    return Reference(self.spec, self.factor)(*args)


def _check(transport, kind, name, factor, client):
  """The check of a candidate that writes a line on stderr at every call, on stdout too where
  stdout is not the wire."""
  if transport == "wire":
    return check_op(kind, name=name, exec_command=client(factor, kind, name, loud=True), **SMALL)
  spec = kinds.make_spec(kind, name, **SMALL)
  return check_op(kind, Loud(spec, factor), name=name, isolate=transport == "isolated", **SMALL)


@pytest.mark.parametrize("transport", ["thread", "isolated", "wire"])
@pytest.mark.parametrize("kind, name", OPS, ids=[k for k, _ in OPS])
def test_every_op_kind_travels_every_transport_and_what_it_writes_reaches_the_report(
    kind, name, transport, client):
  right = _check(transport, kind, name, 1.0, client)
  assert right.verdict == "pass" and right.cases >= SMALL["examples"], right.text()
  assert "a line on stderr" in right.output["stderr"] and right.output["calls"] >= right.cases
  assert transport == "wire" or "a line on stdout" in right.output["stdout"]
  wrong = _check(transport, kind, name, WRONG, client)
  assert wrong.verdict == "fail" and wrong.kind == "numeric", wrong.text()


def test_what_the_candidate_prints_in_this_process_reaches_the_report_past_pytests_capture():
  # pytest's capture replaces sys.stdout and sys.stderr with streams of its own, as a notebook
  # does: print() writes there, not to descriptors 1 and 2
  kind, name = OPS[0]
  spec = kinds.make_spec(kind, name, **SMALL)

  def printing(*args):
    print("printed on stdout")
    print("printed on stderr", file=sys.stderr)
    return Reference(spec, 1.0)(*args)

  out, err = sys.stdout, sys.stderr
  report = check_op(kind, printing, name=name, **SMALL)
  assert report.verdict == "pass", report.text()
  assert report.output["stdout"].count("printed on stdout") == report.output["calls"]
  assert report.output["stderr"].count("printed on stderr") == report.output["calls"]
  assert (sys.stdout, sys.stderr) == (out, err)  # put back


def test_every_kind_is_in_the_matrix():
  assert {k for k, _ in OPS} | {"block"} == set(kinds.KINDS)


def test_a_composition_is_refused_over_the_wire(client):
  spec = kinds.make_spec("block")
  assert wire_ops.untravelled(spec)
  with pytest.raises(ValueError, match="not wire names"):
    check_op("block", exec_command=client(1.0, "block", None))


NETWORK = dict(examples=3, seed=0, max_depth=2, max_width=3, max_batch=3,
               activations=("tanh",), losses=("squared_error",))


class NetworkAnswer:
  """bpref.grad as a network candidate, every gradient times ``factor`` (picklable)."""

  def __init__(self, factor):
    self.factor = factor

  def __call__(self, weights, biases, activations, loss, x, t):
    jax.config.update("jax_enable_x64", True)  # a subprocess of its own starts without it
    params = tuple(bpref.Layer(jnp.asarray(W), jnp.asarray(b), f)
                   for W, b, f in zip(weights, biases, activations))
    grads = bpref.grad(params, jnp.asarray(x), jnp.asarray(t), loss=loss, reduction="mean")
    return ([np.asarray(g.W) * self.factor for g in grads],
            [np.asarray(g.b) * self.factor for g in grads])


@pytest.mark.parametrize("transport", ["thread", "isolated"])
def test_the_network_travels_every_python_transport(transport):
  for factor, verdict in ((1.0, "pass"), (WRONG, "fail")):
    report = bpref.oracle.check(NetworkAnswer(factor), isolate=transport == "isolated", **NETWORK)
    assert report.verdict == verdict, report.text()
