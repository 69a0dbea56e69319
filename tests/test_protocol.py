"""The bpref-wire protocol against clients that break it: each gives a clear report, never a
pass, a hang or a traceback.

The misbehaving clients are one small Python script (standard library only) run with a mode:
it answers bpref's hello, then does what the mode says with each case. The messages are also
checked in isolation (``bpref.oracle.wire``), and the wire format of golden vectors.
"""

from __future__ import annotations

import json
import os
import shlex
import struct
import sys
import time

import numpy as np
import pytest

from bpref.oracle import cli as oracle_cli
from bpref.oracle import isolation
from bpref.oracle import exec as ex
from bpref.oracle import wire

CLIENT = r'''
import json, os, signal, struct, sys, time
mode = sys.argv[1]
inp, out = sys.stdin.buffer, sys.stdout.buffer
HELLO = {"type": "hello", "version": 1, "activations": ["identity", "relu", "tanh", "sigmoid"],
         "losses": ["squared_error"], "dtypes": ["float64", "float32"], "layouts": ["out_in"],
         "reductions": ["mean"]}
def send(header, payload=b""):
  out.write(json.dumps(header).encode() + b"\n" + payload); out.flush()
inp.readline()
if mode == "no_hello":
  send({"type": "grads", "id": 0, "arrays": []}); time.sleep(5); sys.exit(0)
if mode == "hello_version_3":
  send(dict(HELLO, version=3)); time.sleep(5); sys.exit(0)
if mode == "hello_unknown_names":
  send(dict(HELLO, activations=["relu", "swish"], losses=["squared_error", "hinge"])); time.sleep(5)
  sys.exit(0)
if mode == "hello_garbage":
  out.write(b"I am a backprop\n"); out.flush(); time.sleep(5); sys.exit(0)
if mode == "hang_before_hello":
  time.sleep(60)
if mode == "exit_before_hello":
  sys.exit(3)
send(HELLO)
if mode == "exit_after_hello":
  sys.exit(0)
while True:
  line = inp.readline()
  if not line:
    sys.exit(0)
  h = json.loads(line)
  if h["type"] == "bye":
    sys.exit(0)
  size = sum(int.__mul__(*([1] + e["shape"])[-2:]) * (8 if e["dtype"] == "float64" else 4)
             if len(e["shape"]) <= 2 else 0 for e in h["arrays"])
  data = inp.read(size)
  n, L = h["sizes"], len(h["activations"])
  dt, fmt = h["dtype"], ("<%dd" if h["dtype"] == "float64" else "<%df")
  entries, payload = [], b""
  for l in range(1, L + 1):
    shape = [n[l], n[l - 1]]
    if mode == "wrong_shape" and l == 1:
      shape = [n[l - 1] + 1, n[l]]
    edt, efmt = (("float32", "<%df") if mode == "wrong_dtype" and dt == "float64" else (dt, fmt))
    if mode == "int_dtype":
      edt = "int32"
    entries.append({"name": "dW%d" % l, "dtype": edt, "shape": shape})
    value = float("nan") if mode == "nan" else 0.0
    payload += struct.pack(efmt % (shape[0] * shape[1]), *([value] * (shape[0] * shape[1])))
    entries.append({"name": "db%d" % l, "dtype": edt, "shape": [n[l]]})
    payload += struct.pack(efmt % n[l], *([value] * n[l]))
  header = {"type": "grads", "id": h["id"], "arrays": entries}
  if mode == "exit_mid_case":
    sys.exit(0)
  if mode == "segfault":
    os.kill(os.getpid(), signal.SIGSEGV)
  if mode == "hang":
    time.sleep(60)
  if mode == "garbage":
    out.write(b"computing gradients...\n"); out.flush(); time.sleep(5)
  if mode == "malformed_header":
    out.write(b'{"type": "grads", "id": \n'); out.flush(); time.sleep(5)
  if mode == "partial_write":
    out.write(json.dumps(header).encode() + b"\n" + payload[:len(payload) // 2]); out.flush()
    sys.exit(0)
  if mode == "wrong_id":
    header["id"] += 1
  if mode == "unknown_array":
    entries.append({"name": "dX", "dtype": dt, "shape": [1]}); payload += struct.pack(fmt % 1, 0.0)
  if mode == "missing_array":
    entries.pop(); payload = payload[:-n[L] * (8 if dt == "float64" else 4)]
  if mode == "error_reply":
    send({"type": "error", "id": h["id"], "message": "out of memory on the device"}); continue
  send(header, payload)
'''


@pytest.fixture(scope="module")
def client(tmp_path_factory):
  path = tmp_path_factory.mktemp("wire") / "client.py"
  path.write_text(CLIENT)
  return lambda mode: f"{shlex.quote(sys.executable)} {shlex.quote(str(path))} {mode}"


FAST = dict(examples=0, timeout=3.0, shrink_budget=4)


# mode: (kind of the failure, words the message must hold)
BROKEN = {
    "malformed_header": ("protocol", ["not a JSON object", "a fresh process takes any case"]),
    "garbage": ("protocol", ["not a JSON object", b"computing gradients".decode(), "stderr"]),
    "wrong_id": ("protocol", ["its id must be"]),
    "unknown_array": ("protocol", ["unknown array(s) dX"]),
    "missing_array": ("protocol", ["lacks db"]),
    "int_dtype": ("protocol", ["int32", "float64\" or \"float32"]),
    "partial_write": ("crash", ["exited with status 0", "partial reply", "of the"]),
    "exit_mid_case": ("crash", ["exited with status 0", "stop reading cases early"]),
    "exit_after_hello": ("crash", ["exited with status 0", "a fresh process takes any case"]),
    "segfault": ("crash", ["killed by signal SIGSEGV"]),
    "hang": ("timeout", ["did not return within 3 s", "killed", "no byte of a reply came"]),
    "wrong_shape": ("shape", ["has shape", "expected"]),
    "wrong_dtype": ("dtype", ["float32", "float64"]),
    "nan": ("nonfinite", ["NaN"]),
    "error_reply": ("exception", ["replied with an error: out of memory on the device"]),
}


@pytest.mark.parametrize("mode", list(BROKEN))
def test_a_broken_client_fails_with_a_clear_report(client, mode):
  start = time.monotonic()
  report = ex.check(client(mode), **FAST)
  assert report.verdict == "fail", report.text()
  kind, words = BROKEN[mode]
  assert report.kind == kind, report.text()
  for w in words:
    assert w in report.message, report.message
  assert "Traceback" not in report.text()
  assert time.monotonic() - start < 30  # a hang costs one timeout, not one per call


# modes that never get past the hello: a usage error naming the problem
UNSTARTABLE = {
    "no_hello": "expected its hello",
    "hello_version_3": "version 3; this bpref speaks versions 1 and 2",
    "hello_garbage": "not a JSON object",
    "hello_unknown_names": "declares activations swish and losses hinge, which bpref does not know",
    "hang_before_hello": "did not send its hello within 2 s",
    "exit_before_hello": "exited with status 3",
}


@pytest.mark.parametrize("mode", list(UNSTARTABLE))
def test_a_client_without_a_proper_hello_is_a_usage_error(client, mode, capsys):
  start = time.monotonic()
  code = oracle_cli.main(["--exec", client(mode), "--timeout", "2", "--examples", "0"])
  err = capsys.readouterr().err
  assert code == oracle_cli.EXIT_USAGE
  assert UNSTARTABLE[mode] in err, err
  assert "Traceback" not in err
  assert time.monotonic() - start < 20


def test_cli_never_passes_a_client_that_exits_early(client, capsys):
  code = oracle_cli.main(["--exec", client("exit_after_hello"), "--examples", "2", "--json"])
  report = json.loads(capsys.readouterr().out)
  assert code == oracle_cli.EXIT_BUG
  assert report["verdict"] == "fail" and report["kind"] == "crash"


def test_a_crashed_client_is_restarted_for_the_next_case(client):
  with ex.ExecPool(client("segfault"), timeout=3.0) as pool:
    pool.start(0)
    from bpref.oracle import spec as _spec
    spec = _spec.make_spec()
    cases = [_spec.build_case(a, spec) for a in _spec.probes(spec)[:3]]
    outcomes = pool.map([isolation.NetworkCall(case, "out_in") for case in cases])
    assert [o.status for o in outcomes] == ["exited"] * 3
    assert pool.starts == 3  # one start per case: each crashed process was replaced


def test_a_large_case_is_written_without_blocking_on_a_client_that_never_reads(client, tmp_path):
  """A case bigger than a pipe's buffer, sent to a client that stops reading: a timeout."""
  from bpref.oracle import spec as _spec
  sleeper = tmp_path / "sleeper.py"
  sleeper.write_text("import json, sys, time\nsys.stdin.buffer.readline()\n"
                     "print(json.dumps({'type': 'hello', 'version': 1, 'activations': ['tanh'], "
                     "'losses': ['squared_error'], 'dtypes': ['float64'], 'layouts': ['out_in'], "
                     "'reductions': ['mean']}), flush=True)\ntime.sleep(60)\n")
  arch = _spec.Arch((200, 200, 1), ("tanh", "tanh"), "squared_error", 64, 0)
  case = _spec.build_case(arch, _spec.make_spec(max_width=200, max_batch=64))
  start = time.monotonic()
  with ex.ExecPool(f"{shlex.quote(sys.executable)} {shlex.quote(str(sleeper))}", timeout=1.5) as pool:
    pool.start(0)
    (outcome,) = pool.map([isolation.NetworkCall(case, "out_in")])
  assert outcome.status == "timeout"
  assert time.monotonic() - start < 10


# ---------------------------------------------------------------- the format itself

def test_encode_then_read_gives_the_arrays_back_bit_for_bit():
  rng = np.random.default_rng(0)
  a64 = rng.normal(size=(3, 2))
  a32 = rng.normal(size=(4,)).astype(np.float32)
  data = wire.encode({"type": "x"}, [("a", a64), ("b", a32), ("s", np.float64(2.5))])
  ((header, arrays),) = wire.read_messages(data)
  assert header["arrays"][1] == {"name": "b", "dtype": "float32", "shape": [4]}
  assert arrays["a"].tobytes() == a64.tobytes() and arrays["b"].tobytes() == a32.tobytes()
  assert arrays["s"].shape == () and float(arrays["s"]) == 2.5
  # the layout written down in docs/protocol.md: header line, then little-endian row-major bytes
  line, _, payload = data.partition(b"\n")
  assert payload[:8] == struct.pack("<d", a64[0, 0]) and payload[8:16] == struct.pack("<d", a64[0, 1])
  assert len(payload) == 6 * 8 + 4 * 4 + 8


@pytest.mark.parametrize("data, words", [
    (b'{"type": "case", "arrays": [{"name": "W1", "dtype": "float64", "shape": [2]}]}\n\0\0',
     "lists 16 bytes of arrays but only 2 follow"),
    (b'{"type": "case", "arrays": [{"name": "W1", "dtype": "float16", "shape": [1]}]}\n\0\0',
     'dtype "float16"'),
    (b'{"type": "case", "arrays": [{"name": "W1", "dtype": "float64", "shape": [-1]}]}\n',
     "integers >= 0"),
    (b'[1, 2]\n', "not an object"),
    (b'{"arrays": []}\n', 'no "type"'),
    (b'\xff\xfe\n', "not UTF-8"),
])
def test_malformed_messages_are_refused_with_what_was_expected(data, words):
  with pytest.raises(wire.WireError) as info:
    wire.read_messages(data)
  assert words in str(info.value)


def test_case_message_keys_come_before_the_arrays_list():
  """C clients find a key by searching for '"key":'; the arrays list, whose entries hold
  "dtype" and "name" again, must come last."""
  from bpref.oracle import spec as _spec
  spec = _spec.make_spec()
  case = _spec.build_case(_spec.Arch((2, 3, 1), ("tanh", "identity"), "squared_error", 2, 0), spec)
  line = wire.case_message(case, "out_in", 7).split(b"\n")[0].decode()
  assert b" " not in line.encode()
  first_arrays = line.index('"arrays":')
  for key in ("id", "dtype", "layout", "reduction", "loss", "activations", "sizes", "batch", "bias"):
    assert line.index(f'"{key}":') < first_arrays


def test_vectors_export_wire_writes_cases_bpref_reads_back(tmp_path):
  from bpref.oracle import vectors
  directory = str(tmp_path / "golden")
  manifest = vectors.export(directory, cases=3, seed=0, fmt="wire")
  assert manifest["format"] == "wire"
  assert [e["file"] for e in manifest["cases"]] == [f"case_{i:04d}.wire" for i in range(3)]
  results = {}
  for entry in manifest["cases"]:
    path = os.path.join(directory, entry["file"])
    assert vectors.sha256(path) == entry["sha256"]
    with open(path, "rb") as fh:
      (case_h, case_a), (exp_h, exp_a) = wire.read_messages(fh.read())
    assert case_h["type"] == "case" and exp_h["type"] == "expected"
    assert case_h["sizes"] == entry["sizes"] and case_h["activations"] == entry["activations"]
    L = len(entry["activations"])
    assert case_a["W1"].shape == (entry["sizes"][1], entry["sizes"][0])
    biases = [f"db{l}" for l in range(1, L + 1)] if entry["bias"] else []
    assert sorted(exp_a) == sorted([f"dW{l}" for l in range(1, L + 1)] + biases + ["loss"])
    results[entry["file"]] = {k: v for k, v in exp_a.items() if k != "loss"}
  # bpref's own gradients written back as results pass; one changed entry fails that case
  vectors.write_results(str(tmp_path / "ok"), results)
  assert vectors.check(directory, str(tmp_path / "ok"))["passed"]
  first = manifest["cases"][0]["file"]
  results[first] = dict(results[first], dW1=results[first]["dW1"] * 1.001)
  vectors.write_results(str(tmp_path / "bad"), results)
  summary = vectors.check(directory, str(tmp_path / "bad"))
  assert not summary["passed"] and summary["failed"] == 1
