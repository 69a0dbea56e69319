"""bpref-wire version 2: one operation's backward checked over a pipe (``bpref.oracle.ops.wire_ops``).

Two clients: a small Python one (NumPy, written to a temporary directory) that implements
layernorm, dense, gelu_tanh and embedding and misbehaves when told to, and the C reference
client ``examples/c/layers.c`` (layernorm, dense, gelu_tanh, attention, embedding) with its
planted bugs, each of which must get the diagnosis that
the same bug gets when checked in process. Version-1 clients are ``tests/test_exec.py``'s and
``tests/test_protocol.py``'s, unchanged.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from bpref.oracle import cli as oracle_cli
from bpref.oracle import wire
from bpref.oracle.ops import _search, check_op, kinds, wire_ops

import scripts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS_C = os.path.join(ROOT, "examples", "c", "layers.c")
SMALL = dict(examples=6, seed=0)

CLIENT = r'''
import json, os, signal, sys, time
import numpy as np
mode = sys.argv[1]
inp, out = sys.stdin.buffer, sys.stdout.buffer
DT = {"float64": "<f8", "float32": "<f4", "int64": "<i8"}
def send(header, arrays=()):
  entries, payload = [], b""
  for name, a in arrays:
    a = np.ascontiguousarray(a)
    entries.append({"name": name, "dtype": a.dtype.name, "shape": list(a.shape)})
    payload += a.astype(a.dtype.newbyteorder("<")).tobytes()
  header["arrays"] = entries
  out.write(json.dumps(header).encode() + b"\n" + payload); out.flush()
inp.readline()
if mode == "no_ops":
  send({"type": "hello", "version": 2, "dtypes": ["float64"]})
elif mode == "version_1":
  send({"type": "hello", "version": 1, "activations": ["relu"], "losses": ["squared_error"],
        "dtypes": ["float64"], "layouts": ["out_in"], "reductions": ["mean"]})
else:
  send({"type": "hello", "version": 2, "dtypes": ["float64", "float32"],
        "ops": ["layernorm", "dense", "activation:gelu_tanh", "embedding"]})
c, k = (2 / np.pi) ** 0.5, 0.044715
calls = 0
while True:
  line = inp.readline()
  if not line or json.loads(line)["type"] == "bye":
    sys.exit(0)
  h = json.loads(line)
  a = {}
  for e in h["arrays"]:
    dt = np.dtype(DT[e["dtype"]])
    a[e["name"]] = np.frombuffer(inp.read(int(np.prod(e["shape"])) * dt.itemsize), dt).reshape(e["shape"])
  calls += 1
  kind, o = h["kind"], h["options"]
  if kind == "layernorm":
    x, w, dout = a["x"], a["w"], a["dout"]
    xc = x - x.mean(-1, keepdims=True)
    rstd = 1 / np.sqrt((xc * xc).mean(-1, keepdims=True) + o["eps"])
    xhat, g = xc * rstd, dout * w
    dx = rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    C = x.shape[-1]
    res = [("dx", dx), ("dw", (dout * xhat).reshape(-1, C).sum(0)), ("db", dout.reshape(-1, C).sum(0))]
  elif kind == "dense":
    x, W, dout = a["x"], a["W"], a["dout"]
    if mode == "crash_at_batch_3" and x.shape[0] == 3:
      os.kill(os.getpid(), signal.SIGSEGV)
    if mode == "hang_at_batch_3" and x.shape[0] == 3:
      time.sleep(60)
    res = [("dx", dout @ W), ("dW", dout.T @ x)]
    if mode == "history" and calls > 5:
      res[0] = ("dx", 2 * res[0][1])
    if mode == "unknown_name":
      res[1] = ("dw", res[1][1])
    if "b" not in h["none"]:
      res.append(("db", dout.sum(0)))
  elif kind == "activation" and h["name"] == "gelu_tanh":
    z, dout = a["z"], a["dout"]
    t = np.tanh(c * (z + k * z ** 3))
    res = [("dz", dout * (0.5 * (1 + t) + 0.5 * z * (1 - t * t) * c * (1 + 3 * k * z * z)))]
  elif kind == "embedding":
    ids, dout = a["ids"], a["dout"]
    if ids.dtype != np.int64:
      sys.exit(5)
    dwte = np.zeros_like(a["wte"])
    np.add.at(dwte, ids, dout)
    res = [("dwte", dwte), ("dwpe", dout.sum(0))]
  else:
    send({"type": "error", "id": h["id"], "message": "unsupported op " + kind})
    continue
  send({"type": "grads", "id": h["id"]}, res)
'''


@pytest.fixture(scope="module")
def client(tmp_path_factory):
  path = tmp_path_factory.mktemp("wire_ops") / "client.py"
  path.write_text(CLIENT)
  return lambda mode="ok": f"{shlex.quote(sys.executable)} {shlex.quote(str(path))} {mode}"


BUGS = {
    # compile flag: (kind, name, the finding it must get)
    "": None,
    "BUG_LAYERNORM_MEAN": ("layernorm", None, "mean_term_missing"),
    "BUG_MATMUL_DB": ("dense", None, "batch_sum_missing"),
    "BUG_GELU": ("activation", "gelu_tanh", "activation_derivative"),
    "BUG_ATTENTION_SCALE": ("attention", None, "scale_missing"),
    "BUG_ENCODER_OVERWRITE": ("embedding", None, "repeated_token_overwritten"),
}


@pytest.fixture(scope="module")
def layers(tmp_path_factory):
  """examples/c/layers.c built once correct and once per planted bug: {flag: command}."""
  compiler = shutil.which("cc") or shutil.which("gcc")
  if compiler is None:
    pytest.skip("no C compiler (cc, gcc), so examples/c/layers.c cannot be built here")
  out = tmp_path_factory.mktemp("layers")
  built = {}
  for flag in BUGS:
    path = str(out / (flag.lower() or "layers"))
    subprocess.run([compiler, "-O2", "-std=c99", "-Wall", "-Werror", *([f"-D{flag}"] if flag else []),
                    "-o", path, LAYERS_C, "-lm"], check=True, timeout=120)
    built[flag] = shlex.quote(path)
  return built


# ---------------------------------------------------------------- the messages

def test_an_op_message_carries_arrays_by_name_numbers_in_options_and_none_listed():
  spec = kinds.make_spec("dense", bias=False)
  args = (np.ones((2, 3)), np.ones((4, 3)), None, np.ones((2, 4)))
  data = wire_ops.message(spec, args, 7)
  line = data.split(b"\n")[0].decode()
  assert " " not in line
  assert line.index('"options":') < line.index('"args":') < line.index('"none":') < line.index('"arrays":')
  ((header, arrays),) = wire.read_messages(data)
  assert header["type"] == "op" and header["id"] == 7 and header["kind"] == "dense"
  assert header["args"] == ["x", "W", "b", "dout"] and header["none"] == ["b"]
  assert header["options"] == {"bias": False} and header["layout"] == "out_in"
  assert sorted(arrays) == ["W", "dout", "x"] and arrays["W"].shape == (4, 3)
  # a number among the arguments (attention's heads) travels in options, under its name
  line = wire.op_message(1, {"kind": "attention"}, [("qkv", np.zeros((1, 2, 6))), ("heads", 2)])
  assert json.loads(line.split(b"\n")[0])["options"] == {"heads": 2}


def test_integer_arguments_travel_as_int64_and_floats_as_the_declared_dtype():
  spec = kinds.make_spec("embedding", dtype="float32")
  record = kinds.of(spec)
  case = record.case(spec, _search.probes(spec)[1])
  ((header, arrays),) = wire.read_messages(wire_ops.message(spec, record.args(spec, case), 1))
  assert {e["name"]: e["dtype"] for e in header["arrays"]} == {
      "ids": "int64", "wte": "float32", "wpe": "float32", "dout": "float32"}
  assert arrays["ids"].dtype == np.int64
  assert arrays["ids"].tolist() == case.arrays["ids"].astype(np.int64).tolist()


def test_hellos_of_each_version_and_what_an_op_check_misses():
  v1 = {"type": "hello", "version": 1, "activations": ["relu"], "losses": ["squared_error"],
        "dtypes": ["float64"], "layouts": ["out_in"], "reductions": ["mean"]}
  assert wire.read_hello(v1)["ops"] == [] and wire.read_hello(v1)["version"] == 1
  with pytest.raises(wire.WireError, match="non-empty list"):
    wire.read_hello(dict(v1, layouts=[]))  # version 1 declares every network list
  ops_only = wire.read_hello({"type": "hello", "version": 2, "dtypes": ["float32"],
                              "ops": ["dense", "activation:gelu_tanh"]})
  assert ops_only["activations"] == [] and ops_only["ops"] == ["dense", "activation:gelu_tanh"]
  with pytest.raises(wire.WireError, match="check one with --op KIND"):
    wire.check_networks(ops_only)
  assert wire.op_missing(ops_only, "dense", None, "float32") == []
  assert wire.op_missing(ops_only, "activation", "gelu_tanh", "float32") == []
  missing = wire.op_missing(ops_only, "activation", "relu", "float64")
  assert len(missing) == 2 and '"activation:relu" in "ops"' in missing[0]
  assert '"float64" in "dtypes" (it lists float32)' in missing[1]
  assert '"version":2' in wire.op_missing(wire.read_hello(v1), "dense", None, "float64")[0]
  with pytest.raises(wire.WireError, match="version 3; this bpref speaks versions 1 and 2"):
    wire.read_hello(dict(v1, version=3))


# ---------------------------------------------------------------- a Python client

@pytest.mark.parametrize("op", [["--op", "layernorm"], ["--op", "dense"],
                                ["--op", "activation", "--op-name", "gelu_tanh"]])
def test_a_python_client_passes_each_op_it_declares(client, op, capsys):
  code = oracle_cli.main([*op, "--exec", client(), "--examples", "6", "--no-cache"])
  out = capsys.readouterr().out
  assert code == oracle_cli.EXIT_PASS, out
  assert out.startswith("PASS")


def test_int64_ids_travel_to_an_embedding_client(client):
  report = check_op("embedding", exec_command=client(), **SMALL)  # the client exits on other ids
  assert report.verdict == "pass", report.text()
  assert report.spec["dtype"] == "float64"  # what the hello prefers, when not given


def test_a_client_crashing_at_one_batch_size_is_found_and_shrunk_to_it(client):
  report = check_op("dense", exec_command=client("crash_at_batch_3"), **SMALL)
  assert report.verdict == "fail" and report.kind == "crash", report.text()
  assert "killed by signal SIGSEGV" in report.message
  assert report.shrunk and report.case["dims"][0] == 3
  assert np.shape(report.case["arrays"]["x"]) == (3, 1)  # the widths shrunk to 1, B kept at 3


def test_a_hanging_client_is_killed_and_the_check_fails_within_one_timeout(client):
  start = time.monotonic()
  report = check_op("dense", exec_command=client("hang_at_batch_3"), timeout=1.0, **SMALL)
  assert report.verdict == "fail" and report.kind == "timeout", report.text()
  assert "did not return within 1 s" in report.message
  assert time.monotonic() - start < 15


def test_a_failure_that_needs_earlier_calls_is_named_history_dependent(client):
  report = check_op("dense", exec_command=client("history"), **SMALL)
  assert report.verdict == "fail" and report.codes[0] == "history_dependent", report.text()


def test_a_reply_with_an_unknown_output_is_a_protocol_failure(client):
  report = check_op("dense", exec_command=client("unknown_name"), **SMALL)
  assert report.kind == "protocol", report.text()
  assert "unknown array(s) dw" in report.message and "dx, dW, db" in report.message


@pytest.mark.parametrize("mode, args, words", [
    ("no_ops", ["--op", "dense"], ['"dense" in "ops" (it lists none)']),
    ("no_ops", ["--op", "layernorm", "--dtype", "float32"],  # every missing thing at once
     ['"layernorm" in "ops"', '"float32" in "dtypes" (it lists float64)', "--dtype float64"]),
    ("version_1", ["--op", "activation", "--op-name", "gelu_tanh"],
     ['"version":2 (it says 1', '"activation:gelu_tanh" in "ops"']),
    ("ok", ["--op", "activation", "--op-name", "relu"], ['"activation:relu" in "ops" (it lists '
                                                         'layernorm, dense, activation:gelu_tanh']),
])
def test_a_client_that_does_not_declare_the_op_is_refused_before_any_case(client, mode, args, words,
                                                                          capsys):
  code = oracle_cli.main([*args, "--exec", client(mode), "--no-cache"])
  err = capsys.readouterr().err
  assert code == oracle_cli.EXIT_USAGE
  for w in words:
    assert w in err, err


def test_an_op_only_client_is_refused_a_network_check(client, capsys):
  assert oracle_cli.main(["--exec", client(), "--examples", "0", "--no-cache"]) == oracle_cli.EXIT_USAGE
  err = capsys.readouterr().err
  assert "declares no activations" in err and "--op KIND" in err


def test_cli_refuses_a_function_and_a_program_at_once(client, capsys):
  code = oracle_cli.main(["--op", "dense", "--exec", client(), "--function", "m:f"])
  assert code == oracle_cli.EXIT_USAGE and "drop --exec or --function" in capsys.readouterr().err


def test_what_cannot_travel_is_refused_before_the_program_starts(tmp_path):
  missing = str(tmp_path / "not-started")  # the refusal comes first: the program is never run
  with pytest.raises(ValueError, match="argument cache is a tuple"):
    check_op("dense", exec_command=missing, signature="cs231n", layout="in_out")
  with pytest.raises(ValueError, match="not wire names"):
    check_op("block", exec_command=missing)


# ---------------------------------------------------------------- the C client

@pytest.mark.parametrize("kind, name, dtype", [("layernorm", None, "float64"),
                                               ("layernorm", None, "float32"),
                                               ("dense", None, "float64"),
                                               ("activation", "gelu_tanh", "float32"),
                                               ("attention", None, "float64"),
                                               ("attention", None, "float32"),
                                               ("embedding", None, "float64"),
                                               ("embedding", None, "float32")])
def test_c_client_passes_each_op_it_declares(layers, kind, name, dtype):
  report = check_op(kind, name=name, exec_command=layers[""], dtype=dtype, **SMALL)
  assert report.verdict == "pass", report.text()
  assert report.cases >= 20


@pytest.mark.parametrize("options", [dict(layout="in_out"), dict(bias=False)])
def test_c_client_reads_the_layout_and_the_missing_bias_off_the_message(layers, options):
  report = check_op("dense", exec_command=layers[""], **SMALL, **options)
  assert report.verdict == "pass", report.text()


def _layernorm_without_mean_term(x, w, b, dout, eps=1e-5):
  xc = x - x.mean(-1, keepdims=True)
  rstd = 1 / np.sqrt((xc * xc).mean(-1, keepdims=True) + eps)
  xhat, g = xc * rstd, dout * w
  C = x.shape[-1]
  return (rstd * (g - xhat * (g * xhat).mean(-1, keepdims=True)),
          (dout * xhat).reshape(-1, C).sum(0), dout.reshape(-1, C).sum(0))


def _dense_db_first_row(x, W, b, dout):
  return dout @ W, dout.T @ x, dout[0].copy()


def _gelu_tanh_three_missing(z, dout):
  c, k = np.sqrt(2 / np.pi), 0.044715
  t = np.tanh(c * (z + k * z ** 3))
  return dout * (0.5 * (1 + t) + 0.5 * z * (1 - t * t) * c * (1 + k * z * z))


_attention_backward_unscaled = functools.partial(  # no 1/sqrt(hs) in dq and dk
    scripts.load("bench_wire_ops").attention_backward, scale=False)


def _embedding_dwte_assigned(ids, wte, wpe, dout):
  dwte = np.zeros_like(wte)
  dwte[ids] = dout  # one row per repeated token, the last
  return dwte, dout.sum(0)


IN_PROCESS = {"BUG_LAYERNORM_MEAN": _layernorm_without_mean_term,
              "BUG_MATMUL_DB": _dense_db_first_row,
              "BUG_GELU": _gelu_tanh_three_missing,
              "BUG_ATTENTION_SCALE": _attention_backward_unscaled,
              "BUG_ENCODER_OVERWRITE": _embedding_dwte_assigned}
"""Each planted bug of layers.c written in NumPy, checked in process."""


@pytest.mark.parametrize("flag", [f for f in BUGS if f])
def test_c_planted_bug_gets_the_diagnosis_of_the_same_bug_in_process(layers, flag):
  kind, name, code = BUGS[flag]
  over_wire = check_op(kind, name=name, exec_command=layers[flag], **SMALL)
  in_process = check_op(kind, IN_PROCESS[flag], name=name, **SMALL)
  assert over_wire.verdict == in_process.verdict == "fail"
  assert over_wire.kind == in_process.kind == "numeric"
  assert over_wire.codes[0] == in_process.codes[0] == code, over_wire.text()


def test_cli_reproducer_is_the_bytes_bpref_sent(layers, tmp_path, capsys):
  repro = str(tmp_path / "min.wire")
  code = oracle_cli.main(["--op", "layernorm", "--exec", layers["BUG_LAYERNORM_MEAN"],
                          "--examples", "4", "--reproducer", repro, "--no-cache"])
  out = capsys.readouterr().out
  assert code == oracle_cli.EXIT_BUG and "[mean_term_missing]" in out
  assert f"< {repro}" in out
  with open(repro, "rb") as fh:
    sent = wire.read_messages(fh.read())
  assert [h["type"] for h, _ in sent] == ["hello", "op", "bye"]
  assert sent[1][0]["args"] == ["x", "w", "b", "dout"] and sent[1][0]["options"] == {"eps": 1e-5}
  with open(repro, "rb") as fh:  # the program answers it alone, as under a debugger
    raw = subprocess.run(shlex.split(layers["BUG_LAYERNORM_MEAN"]), stdin=fh, capture_output=True,
                         timeout=30)
  replies = wire.read_messages(raw.stdout)
  assert raw.returncode == 0 and [h["type"] for h, _ in replies] == ["hello", "grads"]
  assert sorted(replies[1][1]) == ["db", "dw", "dx"]


def test_replay_judges_a_program_on_the_reproducers_case_again(layers, tmp_path, capsys):
  repro = str(tmp_path / "min.wire")
  assert oracle_cli.main(["--op", "layernorm", "--exec", layers["BUG_LAYERNORM_MEAN"],
                          "--examples", "4", "--reproducer", repro, "--no-cache"]) == 1
  assert f"--op layernorm --exec {layers['BUG_LAYERNORM_MEAN']} --replay {repro}" in \
      capsys.readouterr().out
  assert oracle_cli.main(["--op", "layernorm", "--exec", layers["BUG_LAYERNORM_MEAN"],
                          "--replay", repro]) == oracle_cli.EXIT_BUG
  out = capsys.readouterr().out
  assert out.startswith("FAIL on the reproducer's case of layernorm") and "dx: error" in out
  assert oracle_cli.main(["--op", "layernorm", "--exec", layers[""], "--replay", repro]) == 0
  assert capsys.readouterr().out.startswith("PASS on the reproducer's case of layernorm")


def test_replay_refuses_what_is_not_an_op_reproducer(layers, tmp_path, capsys):
  network = tmp_path / "network.wire"
  network.write_bytes(wire.hello() + wire.BYE)
  assert oracle_cli.main(["--op", "layernorm", "--exec", layers[""], "--replay",
                          str(network)]) == oracle_cli.EXIT_USAGE
  assert "holds 0 op messages" in capsys.readouterr().err
  assert oracle_cli.main(["--op", "layernorm", "--function", "m:f", "--replay",
                          str(network)]) == oracle_cli.EXIT_USAGE
  assert "give it with --exec COMMAND" in capsys.readouterr().err


def test_pool_sends_the_backward_only(layers):
  with wire_ops.OpWirePool(layers[""], "activation", "gelu_tanh") as pool:
    info = pool.start()
    assert info["forward"] is False and info["cheap_restarts"] is True
    spec = pool.spec
    record = kinds.of(spec)
    case = record.case(spec, _search.probes(spec)[0])
    args = record.args(spec, case)
    fwd, bwd = pool.map([("forward", record.forward_args(spec, case)), ("backward", args)])
  assert fwd.status == "exception" and "not sent" in fwd.error
  assert bwd.status == "ok" and bwd.result.shape == args[0].shape

