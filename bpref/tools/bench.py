"""``bpref bench``: bpref's jitted gradient against the jitted autodiff witness (JAX's value_and_grad).

Two benchmarks:

* **The grid.** For each cell (an architecture, an activation, a dtype) both
  gradients are compiled once for the same inputs and timed in interleaved
  repeats; the table gives the median time of each, their ratio, the FLOPs that
  XLA's ``cost_analysis()`` counts for the forward pass and for each gradient,
  the matmul FLOPs in each optimized program against the minimum count
  2 B (P + 2P - n_1 n_0) (P = sum_l n_l n_{l-1}: the forward pass and the
  backward pass without the input gradient), the compiled temp memory
  (``memory_analysis()``), and bpref's achieved GFLOP/s against a plain
  jitted (B, n) x (n, n) matmul timed in the same interleaved samples. GFLOP/s
  count the minimum matmul FLOPs (the work any backprop must do), not the dots
  of the optimized program: on a GPU, XLA hands large products to cuBLAS as
  custom calls, which neither ``cost_analysis()`` nor the dot count sees.
* **Architectures per second.** Random small networks (depth 1-5, widths 1-8,
  batch 1-4, random activations and losses) evaluated by ``bpref.scale.fast`` in
  buckets, by ``jax.jit`` per architecture, and eagerly; compilation counted.

The witness is ``bpref.witnesses.autodiff.value_and_grad`` (``jax.value_and_grad`` of
the same loss), jitted. Timings on a shared machine are noisy; compare the
ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from bpref import activations as _activations
from bpref import backprop as _backprop
from bpref import losses as _losses
from bpref import network as _network
from bpref import problems as _problems
from bpref.validation import ranged
from bpref.witnesses import autodiff as _autodiff

GRID = {
    # name: (layers, width, batch)
    "tiny": (3, 16, 8),
    "small": (3, 64, 64),
    "medium": (4, 512, 256),
    "large": (4, 2048, 512),
    "deep": (32, 64, 128),
}
ACTIVATIONS = ("tanh", "relu", "gelu")
DTYPES = ("float32", "float64")
QUICK_CELLS = ("tiny", "small", "medium", "deep")
QUICK_DTYPES = ("float32",)
LOSS, REDUCTION = "squared_error", "mean"


# ---------------------------------------------------------------- measurement helpers

def _cell_problem(layers, width, batch, activation, dtype):
  """A network of ``layers`` layers of ``width`` units, f = ``activation``, identity output."""
  key_p, key_x, key_t = jax.random.split(jax.random.key(0), 3)
  acts = (activation,) * (layers - 1) + ("identity",)
  params = _network.init(key_p, (width,) * (layers + 1), acts, dtype=dtype)
  x = jax.random.normal(key_x, (batch, width), dtype)
  t = jax.random.normal(key_t, (batch, width), dtype)
  return params, x, t


def _ours(params, x, t):
  return _backprop.value_and_grad(params, x, t, LOSS, REDUCTION)


def _theirs(params, x, t):
  return _autodiff.value_and_grad(params, x, t, LOSS, REDUCTION)


def _forward(params, x, t):
  return _backprop.loss_value(params, x, t, LOSS, REDUCTION)


_SHAPE = re.compile(r"%([\w.\-]+) = \w+\[([\d,]*)\]")
_DOT = re.compile(r"= \w+\[([\d,]*)\]\S* dot\(%([\w.\-]+),")
_CONTRACTING = re.compile(r"lhs_contracting_dims=\{([\d,]*)\}")


def _dims(text):
  return [int(d) for d in text.split(",") if d]


def dot_flops(hlo_text: str) -> int:
  """2 x (multiply-adds) of every dot in an optimized HLO module: 2 x (output size) x K."""
  shapes = {m.group(1): _dims(m.group(2)) for m in _SHAPE.finditer(hlo_text)}
  total = 0
  for line in hlo_text.splitlines():
    dot = _DOT.search(line)
    if dot is None:
      continue
    lhs = shapes[dot.group(2)]
    k = math.prod(lhs[i] for i in _dims(_CONTRACTING.search(line).group(1)))
    total += 2 * math.prod(_dims(dot.group(1))) * k
  return total


def minimum_flops(sizes, batch) -> int:
  """2 B (3P - n_1 n_0): forward z_l, backward delta_l W_l for l >= 2 and dC/dW_l (proofs)."""
  p = sum(sizes[l] * sizes[l - 1] for l in range(1, len(sizes)))
  return 2 * batch * (3 * p - sizes[1] * sizes[0])


def _cost_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", float("nan")))


def _calibrate(fn, target_s=0.02):
  """Calls per sample so that one sample lasts about ``target_s``."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  once = max(time.perf_counter() - start, 1e-6)
  return max(1, min(1000, int(target_s / once)))


def _sample(fn, calls):
  start = time.perf_counter()
  out = None
  for _ in range(calls):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / calls


def time_group(fns, repeats):
  """Median seconds per call of each function, timed in interleaved samples (order rotates)."""
  for fn in fns:
    jax.block_until_ready(fn())
  calls = min(_calibrate(fn) for fn in fns)
  samples = [[] for _ in fns]
  for r in range(repeats):
    for i in range(len(fns)):
      j = (i + r) % len(fns)
      samples[j].append(_sample(fns[j], calls))
  return [statistics.median(s) for s in samples]


def _plain_matmul(batch, width, dtype):
  """A jitted (B, n) x (n, n) matmul at full precision and its FLOPs."""
  kx, kw = jax.random.split(jax.random.key(1))
  x = jax.random.normal(kx, (batch, width), dtype)
  w = jax.random.normal(kw, (width, width), dtype)
  f = jax.jit(lambda a, b: jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST))
  return (lambda: f(x, w)), 2 * batch * width * width


def bench_cell(name, activation, dtype, repeats):
  layers, width, batch = GRID[name]
  params, x, t = _cell_problem(layers, width, batch, activation, jnp.dtype(dtype))
  row = {"cell": name, "activation": activation, "dtype": dtype, "layers": layers, "width": width,
         "batch": batch}
  compiled = {}
  for label, fn in (("forward", _forward), ("bpref", _ours), ("jax", _theirs)):
    start = time.perf_counter()
    compiled[label] = jax.jit(fn).lower(params, x, t).compile()
    row[f"compile_s_{label}"] = round(time.perf_counter() - start, 3)
    row[f"flops_{label}"] = _cost_flops(compiled[label])
    row[f"dot_flops_{label}"] = dot_flops(compiled[label].as_text())
    row[f"temp_bytes_{label}"] = int(compiled[label].memory_analysis().temp_size_in_bytes)
  row["dot_flops_minimum"] = minimum_flops((width,) * (layers + 1), batch)
  ours, theirs = compiled["bpref"], compiled["jax"]
  matmul, matmul_flops = _plain_matmul(batch, width, jnp.dtype(dtype))
  t_ours, t_theirs, t_matmul = time_group(
      [lambda: ours(params, x, t), lambda: theirs(params, x, t), matmul], repeats)
  row["seconds_bpref"] = t_ours
  row["seconds_jax"] = t_theirs
  row["ratio"] = t_ours / t_theirs
  row["gflops_bpref"] = row["dot_flops_minimum"] / t_ours / 1e9
  row["gflops_jax"] = row["dot_flops_minimum"] / t_theirs / 1e9
  row["gflops_matmul"] = matmul_flops / t_matmul / 1e9
  row["fraction_of_matmul"] = row["gflops_bpref"] / row["gflops_matmul"]
  return row


# ---------------------------------------------------------------- architectures per second

def random_architecture(rng: np.random.Generator, dtype=np.float64) -> _problems.Problem:
  """Depth 1-5, widths 1-8, batch 1-4; random activations, loss and reduction."""
  loss = str(rng.choice(tuple(_losses.LOSSES)))
  depth = int(rng.integers(1, 6))
  sizes = [int(rng.integers(1, 9)) for _ in range(depth + 1)]
  acts = [str(rng.choice(_problems.HIDDEN)) for _ in range(depth - 1)]
  acts.append(_problems.output_activation(rng, loss))
  bias = bool(rng.random() < 0.8)
  layers = []
  for l in range(1, depth + 1):
    W = (rng.normal(size=(sizes[l], sizes[l - 1])) / np.sqrt(sizes[l - 1])).astype(dtype)
    b = (rng.normal(size=(sizes[l],)) * 0.1).astype(dtype) if bias else None
    layers.append(_network.Layer(W, b, acts[l - 1]))
  batch = int(rng.integers(1, 5))
  x = rng.normal(size=(batch, sizes[0])).astype(dtype)
  t = _problems.targets(rng, loss, (batch, sizes[-1])).astype(dtype)
  return _problems.Problem(tuple(layers), x, t, loss, str(rng.choice(("mean", "sum"))))


def _architecture(problem) -> tuple:
  return (tuple(p.W.shape for p in problem.params), tuple(p.activation for p in problem.params),
          problem.params[0].b is not None, problem.loss, problem.reduction, problem.x.shape[0])


def _rate(run_one, cases, budget_s):
  """Cases per second of ``run_one`` over as many cases as fit in ``budget_s`` (at least 2)."""
  start = time.perf_counter()
  done = 0
  for case in cases:
    jax.block_until_ready(run_one(case))
    done += 1
    if done >= 2 and time.perf_counter() - start > budget_s:
      break
  seconds = time.perf_counter() - start
  return {"cases": done, "seconds": round(seconds, 3), "per_second": done / seconds}


def bench_architectures(count, seed, budget_s):
  """Distinct architectures per second: bpref.scale.fast, jit per architecture, eager."""
  from bpref.scale import fast
  rng = np.random.default_rng(seed)
  cases = [random_architecture(rng) for _ in range(count)]
  distinct = len({_architecture(c) for c in cases})
  jax.clear_caches()
  start = time.perf_counter()
  fast.evaluate_many(cases)
  first = time.perf_counter() - start
  start = time.perf_counter()
  fast.evaluate_many(cases)
  warm = time.perf_counter() - start
  out = {"cases": count, "distinct_architectures": distinct, "dtype": "float64",
         "fast": {"cases": count, "seconds": round(first, 3), "per_second": count / first,
                  "compiled_functions": fast.compiled_count(),
                  "warm_seconds": round(warm, 4), "warm_per_second": count / warm}}
  jax.clear_caches()
  jitted = jax.jit(_backprop.value_and_grad, static_argnums=(3, 4))
  out["jit_per_architecture"] = _rate(lambda c: jitted(*c), cases, budget_s)
  jax.clear_caches()
  out["eager"] = _rate(lambda c: _backprop.value_and_grad(*c), cases, budget_s)
  return out


# ---------------------------------------------------------------- report

def _geomean(values):
  values = [v for v in values if v > 0]
  return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def summarize(rows) -> dict:
  ratios = [r["ratio"] for r in rows]
  large = [r for r in rows if r["cell"] == "large"]
  return {
      "ratio_geomean": _geomean(ratios),
      "ratio_max": max(ratios),
      "cells_flops_not_above_jax": sum(r["flops_bpref"] <= r["flops_jax"] for r in rows),
      "cells_dot_flops_at_minimum": sum(r["dot_flops_bpref"] == r["dot_flops_minimum"] for r in rows),
      "cells_temp_not_above_jax": sum(r["temp_bytes_bpref"] <= r["temp_bytes_jax"] for r in rows),
      "cells": len(rows),
      "large_fraction_of_matmul": {f"{r['activation']} {r['dtype']}": r["fraction_of_matmul"]
                                   for r in large},
  }


def format_table(result) -> str:
  head = (f"{'cell':7} {'act':5} {'dtype':7} {'bpref ms':>9} {'jax ms':>9} {'ratio':>6} "
          f"{'fwd MF':>9} {'bpref MF':>9} {'jax MF':>9} {'dot MF':>9} {'min MF':>9} "
          f"{'bpref KiB':>10} {'jax KiB':>9} {'GF/s':>7} {'mm GF/s':>8}")
  lines = [head, "-" * len(head)]
  for r in result["grid"]:
    lines.append(
        f"{r['cell']:7} {r['activation']:5} {r['dtype']:7} {r['seconds_bpref'] * 1e3:9.3f} "
        f"{r['seconds_jax'] * 1e3:9.3f} {r['ratio']:6.2f} {r['flops_forward'] / 1e6:9.3f} "
        f"{r['flops_bpref'] / 1e6:9.3f} {r['flops_jax'] / 1e6:9.3f} {r['dot_flops_bpref'] / 1e6:9.3f} "
        f"{r['dot_flops_minimum'] / 1e6:9.3f} {r['temp_bytes_bpref'] / 1024:10.1f} "
        f"{r['temp_bytes_jax'] / 1024:9.1f} {r['gflops_bpref']:7.2f} {r['gflops_matmul']:8.2f}")
  s = result["summary"]
  lines += ["-" * len(head),
            f"ratio bpref/jax: geometric mean {s['ratio_geomean']:.3f}, max {s['ratio_max']:.3f}",
            f"XLA flops <= jax.grad's in {s['cells_flops_not_above_jax']}/{s['cells']} cells; "
            f"matmul flops at the minimum 2B(3P - n1 n0) in {s['cells_dot_flops_at_minimum']}/{s['cells']}; "
            f"temp memory <= jax.grad's in {s['cells_temp_not_above_jax']}/{s['cells']}"]
  if s["large_fraction_of_matmul"]:
    lines.append("large cells, bpref's GFLOP/s as a fraction of a plain (B, n) x (n, n) matmul's: "
                 + ", ".join(f"{k} {f:.2f}" for k, f in s["large_fraction_of_matmul"].items()))
  arch = result.get("architectures")
  if arch:
    lines.append(
        f"architectures/s ({arch['cases']} cases, {arch['distinct_architectures']} distinct, "
        f"compilation counted): fast {arch['fast']['per_second']:.0f} "
        f"({arch['fast']['compiled_functions']} compiled, warm {arch['fast']['warm_per_second']:.0f}/s), "
        f"jit per architecture {arch['jit_per_architecture']['per_second']:.1f} "
        f"(over {arch['jit_per_architecture']['cases']} cases), "
        f"eager {arch['eager']['per_second']:.1f} (over {arch['eager']['cases']} cases)")
  lines.append(f"{result['machine']}; {result['seconds']:.0f} s")
  return "\n".join(lines)


def markdown_table(result) -> str:
  """The cells as docs/performance.md prints them (``bpref bench --markdown``)."""
  lines = ["| cell | f | dtype | bpref ms | jax ms | ratio | XLA MFLOP bpref / jax | "
           "matmul MFLOP (= minimum?) | temp KiB bpref / jax | GFLOP/s bpref / plain matmul |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
  for r in result["grid"]:
    at_min = "=" if r["dot_flops_bpref"] == r["dot_flops_minimum"] else f"(min {r['dot_flops_minimum'] / 1e6:.3f})"
    lines.append(
        f"| {r['cell']} | {r['activation']} | {r['dtype'][-2:]} | {r['seconds_bpref'] * 1e3:.3f} | "
        f"{r['seconds_jax'] * 1e3:.3f} | {r['ratio']:.2f} | {r['flops_bpref'] / 1e6:.3f} / "
        f"{r['flops_jax'] / 1e6:.3f} | {r['dot_flops_bpref'] / 1e6:.3f} {at_min} | "
        f"{r['temp_bytes_bpref'] // 1024} / {r['temp_bytes_jax'] // 1024} | "
        f"{r['gflops_bpref']:.1f} / {r['gflops_matmul']:.1f} |")
  s = result["summary"]
  lines += ["", f"Geometric mean of the ratios {s['ratio_geomean']:.3f}, largest {s['ratio_max']:.2f} "
            f"({s['cells']} cells, {result['repeats']} repeats; {result['machine']}; {result['date']})."]
  if "architectures" in result:
    arch = result["architectures"]
    lines += ["", f"Random architectures a second ({arch['cases']} cases, {arch['distinct_architectures']} "
              f"distinct, compilation counted): `bpref.scale.fast` {arch['fast']['per_second']:.0f} "
              f"({arch['fast']['compiled_functions']} compiled, {arch['fast']['warm_per_second']:.0f} a second "
              f"once compiled); jit per architecture {arch['jit_per_architecture']['per_second']:.1f}; "
              f"eager {arch['eager']['per_second']:.1f}."]
  return "\n".join(lines)


# ---------------------------------------------------------------- checkers

_CANDIDATE = '''
import numpy as np
F = {"identity": (lambda z: z, lambda z, a: np.ones_like(z)), "relu": (lambda z: np.maximum(z, 0), lambda z, a: (z > 0) * 1.0),
     "tanh": (np.tanh, lambda z, a: 1 - a * a), "sigmoid": (lambda z: 1 / (1 + np.exp(-z)), lambda z, a: a * (1 - a))}
def grads(weights, biases, activations, loss, x, t):  # textbook NumPy, squared error, mean
  a, tape = x, []
  for W, b, f in zip(weights, biases, activations):
    z = a @ W.T + b
    tape.append((a, z, F[f][0](z)))
    a = tape[-1][2]
  g = 2 * (a - t) / x.shape[0]
  dW, db = [None] * len(weights), [None] * len(weights)
  for l in reversed(range(len(weights))):
    a_prev, z, a_l = tape[l]
    delta = g * F[activations[l]][1](z, a_l)
    dW[l], db[l] = delta.T @ a_prev, delta.sum(axis=0)
    g = delta @ weights[l]
  return dW, db
'''

_NETWORK = '''
rng = np.random.default_rng(0)
SIZES, ACTS, B = (4, 8, 8, 3), ("tanh", "relu", "sigmoid"), 8
Ws = [rng.normal(size=(m, n)) / np.sqrt(n) for n, m in zip(SIZES, SIZES[1:])]
bs = [rng.normal(size=m) * 0.1 for m in SIZES[1:]]
x, t = rng.normal(size=(B, SIZES[0])), rng.normal(size=(B, SIZES[-1]))
'''

_SCRIPTS = {
    "bpref_one_network": _CANDIDATE + '''
import json, time
import jax
jax.config.update("jax_enable_x64", True)
import bpref
from bpref import compilation
from bpref.error import worst_error
from bpref.problems import problem_tolerance
''' + _NETWORK + '''
with compilation.count() as seen:
  start = time.perf_counter()
  params = bpref.from_arrays(Ws, bs, ACTS)
  dW, db = grads(Ws, bs, ACTS, "squared_error", x, t)
  _, truth = jax.jit(bpref.value_and_grad, static_argnums=(3, 4))(params, x, t, "squared_error", "mean")
  mine = tuple(bpref.Layer(w, b, f) for w, b, f in zip(dW, db, ACTS))
  ok = worst_error(mine, truth) <= problem_tolerance(params, x)
  seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "passed": bool(ok), "compilations": seen.compilations}))
''',
    "jax_check_grads": '''
import json, time
import numpy as np
import jax
import jax.numpy as jnp
jax.config.update("jax_enable_x64", True)
from jax.test_util import check_grads
from bpref import compilation
F = {"tanh": jnp.tanh, "relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid}
''' + _NETWORK + '''
def loss(params):
  a = x
  for (W, b), f in zip(params, ACTS):
    a = F[f](a @ W.T + b)
  return jnp.sum((a - t) ** 2) / B
with compilation.count() as seen:
  start = time.perf_counter()
  check_grads(loss, ([(jnp.asarray(W), jnp.asarray(b)) for W, b in zip(Ws, bs)],), order=1, modes=("rev",))
  seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "passed": True, "compilations": seen.compilations}))
''',
    "torch_gradcheck": '''
import json, time
import numpy as np
import torch
F = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid}
''' + _NETWORK + '''
def loss(*flat):
  a = torch.as_tensor(x)
  for l, f in enumerate(ACTS):
    a = F[f](a @ flat[2 * l].T + flat[2 * l + 1])
  return ((a - torch.as_tensor(t)) ** 2).sum() / B
inputs = []
for W, b in zip(Ws, bs):
  inputs += [torch.tensor(W, requires_grad=True), torch.tensor(b, requires_grad=True)]
start = time.perf_counter()
ok = torch.autograd.gradcheck(loss, tuple(inputs))
print(json.dumps({"seconds": time.perf_counter() - start, "passed": bool(ok)}))
''',
    "bpref_default_check": _CANDIDATE + '''
import json, time
import jax
jax.config.update("jax_enable_x64", True)
import bpref.oracle
from bpref import compilation
with compilation.count() as seen:
  start = time.perf_counter()
  cold = bpref.oracle.check(grads, examples=40, seed=0)
  cold_s = time.perf_counter() - start
start = time.perf_counter()
warm = bpref.oracle.check(grads, examples=40, seed=1)
warm_s = time.perf_counter() - start
print(json.dumps({"passed": cold.passed and warm.passed, "compilations": seen.compilations,
                  "cold": {"cases": cold.cases, "calls": cold.calls, "seconds": cold_s},
                  "warm": {"cases": warm.cases, "calls": warm.calls, "seconds": warm_s}}))
''',
}
"""Fresh-process scripts: the one-network checks (after imports) and a default oracle check."""


def _fresh(script: str, timeout: float = 600) -> dict:
  import subprocess
  try:
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=timeout)
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout:.0f} s"}
  if proc.returncode != 0:
    return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_checkers(verify_quick: bool = False) -> dict:
  """Checking, each in a fresh process: one fixed network (4, 8, 8, 3), tanh, relu, sigmoid,
  B = 8, float64, checked by bpref (a textbook candidate against bpref's gradient and (T)),
  by ``jax.test_util.check_grads`` and by ``torch.autograd.gradcheck`` (where torch is
  installed), timed after the imports; a default ``bpref.oracle.check`` cold and warm, with
  its compilations; and with ``verify_quick`` the wall time of ``bpref verify --quick``, cold
  (an empty cache folder of its own) and then warm (the same folder)."""
  import importlib.util

  out = {}
  for name in ("bpref_one_network", "jax_check_grads", "torch_gradcheck"):
    if name == "torch_gradcheck" and importlib.util.find_spec("torch") is None:
      out[name] = {"skipped": "torch is not installed"}
      continue
    out[name] = _fresh(_SCRIPTS[name])
  check = _fresh(_SCRIPTS["bpref_default_check"])
  for phase in ("cold", "warm"):
    if phase in check:
      check[phase]["calls_per_second"] = check[phase]["calls"] / check[phase]["seconds"]
  out["bpref_default_check"] = check
  if verify_quick:
    with tempfile.TemporaryDirectory() as cache:
      out["verify_quick"] = {phase: _verify_quick(cache) for phase in ("cold", "warm")}
  return out


def _verify_quick(cache: str) -> dict:
  """The wall time, verdict and compilations of ``bpref verify --quick`` in a fresh process
  whose cache folder is ``cache``."""
  import subprocess

  start = time.perf_counter()
  proc = subprocess.run([sys.executable, "-m", "bpref", "verify", "--quick", "--json",
                         "--no-progress", "--cache-dir", cache],
                        capture_output=True, text=True, timeout=1800)
  summary = json.loads(proc.stdout) if proc.returncode in (0, 1) and proc.stdout.strip() else {}
  return {"wall_seconds": time.perf_counter() - start, "passed": summary.get("passed"),
          "compilations": summary.get("compilation", {}).get("compilations"),
          "cache_hits": summary.get("compilation", {}).get("cache_hits")}


OP_NAMES = {"activation": "tanh", "layer": "relu", "loss": "softmax_cross_entropy",
            "residual": "gelu_tanh"}
"""The name each named kind is benchmarked with."""


def bench_ops(kinds_=None, dtype="float32", seed=0) -> list:
  """A default search per op kind (``check_op`` with its default examples), the candidate bpref's
  own answer (``bpref.oracle.ops.Reference``): cases checked per second, in process, and the XLA
  compilations of the search, cold (the first search of the kind in this process) and warm."""
  from bpref import compilation
  from bpref.oracle.ops import Reference, check_op, kinds
  rows = []
  for kind in kinds_ or kinds.KINDS:
    record = kinds.get(kind)
    name = OP_NAMES.get(kind) or (record.names[0] if record.names and kind != "block" else None)
    spec = kinds.make_spec(kind, name, dtype=dtype, seed=seed)
    if kind == "block":
      steps = {}
      for sub_kind in ("dense", "activation", "layernorm", "attention"):
        steps[sub_kind] = _block_step(sub_kind, dtype, seed)
      candidate = steps
    else:
      candidate = Reference(spec)
    row = {"kind": kind, "name": name}
    for phase in ("cold", "warm"):
      with compilation.count() as seen:
        start = time.perf_counter()
        report = check_op(kind, candidate, name=name, dtype=dtype, seed=seed)
        seconds = time.perf_counter() - start
      row[phase] = {"verdict": report.verdict, "cases": report.cases, "calls": report.calls,
                    "seconds": seconds, "cases_per_second": report.cases / seconds,
                    "compilations": seen.to_json().get("compilations")}
    rows.append(row)
  return rows


def _block_step(kind, dtype, seed):
  """A block step's reference candidate: heads read from the call, as the block hands it."""
  from bpref.oracle.ops import Reference, kinds

  def step(*args):
    options = {"heads": args[2]} if kind == "attention" else {}
    name = "gelu_tanh" if kind == "activation" else None
    spec = kinds.make_spec(kind, name, dtype=dtype, seed=seed, **options)
    return Reference(spec)(*args)

  return step


def format_ops(rows) -> str:
  lines = ["op kinds: a default check_op search, the candidate bpref's own answer, in process:",
           f"  {'kind':10s} {'cases':>5s} {'cold s':>7s} {'cases/s':>8s} {'comp.':>5s}   "
           f"{'warm s':>7s} {'cases/s':>8s} {'comp.':>5s}  verdict"]
  for r in rows:
    c, w = r["cold"], r["warm"]
    lines.append(f"  {r['kind']:10s} {c['cases']:5d} {c['seconds']:7.2f} {c['cases_per_second']:8.1f} "
                 f"{c['compilations']!s:>5s}   {w['seconds']:7.2f} {w['cases_per_second']:8.1f} "
                 f"{w['compilations']!s:>5s}  {w['verdict']}")
  return "\n".join(lines)


def format_checkers(result: dict) -> str:
  lines = ["checking one network (4, 8, 8, 3) tanh/relu/sigmoid, B = 8, float64, fresh process, after imports:"]
  for name in ("bpref_one_network", "jax_check_grads", "torch_gradcheck"):
    r = result[name]
    if "seconds" in r:
      extra = f", {r['compilations']} compilations" if "compilations" in r else ""
      lines.append(f"  {name:20s} {r['seconds']:7.3f} s{extra}")
    else:
      lines.append(f"  {name:20s} {r.get('skipped') or r.get('error')}")
  c = result["bpref_default_check"]
  if "cold" in c:
    lines.append(f"default bpref.oracle.check: {c['compilations']} compilations; cold {c['cold']['calls']} "
                 f"candidate calls in {c['cold']['seconds']:.2f} s ({c['cold']['calls_per_second']:.0f}/s), "
                 f"warm {c['warm']['calls']} in {c['warm']['seconds']:.2f} s "
                 f"({c['warm']['calls_per_second']:.0f}/s)")
  else:
    lines.append(f"default bpref.oracle.check: {c.get('error')}")
  for phase, v in result.get("verify_quick", {}).items():
    lines.append(f"bpref verify --quick, {phase}: {v['wall_seconds']:.1f} s wall, "
                 f"{v['compilations']} compilations ({v['cache_hits']} read from the cache), "
                 f"passed {v['passed']}")
  return "\n".join(lines)


def _has_matplotlib() -> bool:
  import importlib.util
  return importlib.util.find_spec("matplotlib") is not None


def plot(result, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = result["grid"]
  labels = [f"{r['cell']}\n{r['activation']}\n{r['dtype'][5:]}" for r in rows]
  fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(rows)), 4))
  ax.bar(range(len(rows)), [r["ratio"] for r in rows], color="tab:blue")
  ax.axhline(1.0, color="black", linewidth=0.8)
  ax.axhline(0.95, color="tab:green", linewidth=0.8, linestyle="--", label="target geomean 0.95")
  ax.set_xticks(range(len(rows)))
  ax.set_xticklabels(labels, fontsize=6)
  ax.set_ylabel("time bpref / jax.grad")
  ax.set_title(f"bpref vs jax.jit(jax.value_and_grad): geomean {result['summary']['ratio_geomean']:.2f}")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run(cells, activations, dtypes, repeats, arch_cases, arch_budget_s, seed=0, progress=None) -> dict:
  start = time.perf_counter()
  rows = []
  for name in cells:
    for dtype in dtypes:
      for act in activations:
        rows.append(bench_cell(name, act, dtype, repeats))
        if progress:
          progress(rows[-1])
  result = {"grid": rows, "repeats": repeats, "loss": LOSS, "reduction": REDUCTION,
            "summary": summarize(rows)}
  if arch_cases:
    result["architectures"] = bench_architectures(arch_cases, seed, arch_budget_s)
  result["machine"] = (f"{platform.machine()} {platform.processor() or ''} {jax.default_backend()} "
                       f"jax {jax.__version__}, {jax.device_count()} device(s)").replace("  ", " ")
  result["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
  result["seconds"] = time.perf_counter() - start
  return result


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="bpref bench",
      description="Time bpref's jitted value_and_grad against jax.jit(jax.value_and_grad) and count "
                  "FLOPs and memory; then architectures per second through bpref.scale.fast.")
  parser.add_argument("--quick", action="store_true",
                      help=f"cells {', '.join(QUICK_CELLS)}, float32, 5 repeats, 1000 architectures")
  parser.add_argument("--cells", default=None, help=f"comma-separated subset of {', '.join(GRID)}")
  parser.add_argument("--activations", default=",".join(ACTIVATIONS))
  parser.add_argument("--dtypes", default=None, help="comma-separated: float32,float64")
  parser.add_argument("--repeats", type=ranged(1, 10_000), default=None,
                      help="timed samples per function, 1 to 10000 (default 7)")
  parser.add_argument("--arch-cases", type=ranged(0, 10_000_000), default=None,
                      help="random architectures for the architectures/s benchmark (0: skip)")
  parser.add_argument("--arch-budget", type=ranged(0.0, 86_400.0, float, unit="seconds"), default=None,
                      help="seconds for each of the jit-per-architecture and eager baselines")
  parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
  parser.add_argument("--markdown", action="store_true",
                      help="print the table of docs/performance.md (Markdown) instead")
  parser.add_argument("--plot", metavar="PNG", default=None, help="write a bar chart of the ratios")
  parser.add_argument("--checkers", action="store_true",
                      help="only the checking figures: one network checked by bpref, "
                           "jax.test_util.check_grads and torch.autograd.gradcheck, and a default "
                           "bpref.oracle.check cold and warm, each in a fresh process")
  parser.add_argument("--verify", action="store_true",
                      help="with --checkers: also time bpref verify --quick")
  parser.add_argument("--ops", nargs="?", const="all", default=None, metavar="KINDS",
                      help="only the op kinds: a default check_op search per kind (comma-separated "
                           "kinds, default all), cases per second and compilations, cold and warm")
  parser.add_argument("--seed", type=ranged(0, 2**32 - 1), default=0, help="0 to 2**32 - 1")
  args = parser.parse_args(argv)
  if args.ops:
    jax.config.update("jax_enable_x64", True)
    from bpref.oracle.ops import kinds as _op_kinds

    chosen = None if args.ops == "all" else tuple(args.ops.split(","))
    unknown = [k for k in chosen or () if k not in _op_kinds.KINDS]
    if unknown:
      parser.error(f"--ops: unknown kinds {unknown}; valid: {', '.join(_op_kinds.KINDS)}")
    dtype = args.dtypes.split(",")[0] if args.dtypes else "float32"
    rows = bench_ops(chosen, dtype, args.seed)
    print(json.dumps(rows, indent=2) if args.json else format_ops(rows))
    return 0
  if args.checkers:
    result = bench_checkers(verify_quick=args.verify)
    print(json.dumps(result, indent=2) if args.json else format_checkers(result))
    return 0
  jax.config.update("jax_enable_x64", True)
  cells = tuple(args.cells.split(",")) if args.cells else (QUICK_CELLS if args.quick else tuple(GRID))
  unknown = [c for c in cells if c not in GRID]
  if unknown:
    parser.error(f"unknown cells {unknown}; valid: {', '.join(GRID)}")
  activations = tuple(args.activations.split(","))
  for act in activations:
    try:
      _activations.get(act)
    except ValueError as err:
      parser.error(str(err))
  dtypes = tuple(args.dtypes.split(",")) if args.dtypes else (QUICK_DTYPES if args.quick else DTYPES)
  if any(d not in DTYPES for d in dtypes):
    parser.error(f"--dtypes must be among {', '.join(DTYPES)}; got {args.dtypes}")
  repeats = args.repeats or (5 if args.quick else 7)
  if repeats < 1:
    parser.error("--repeats must be >= 1")
  arch_cases = 1000 if args.arch_cases is None else args.arch_cases
  arch_budget = args.arch_budget or (10.0 if args.quick else 30.0)

  def progress(row):
    if not args.json:
      sys.stderr.write(f"{row['cell']:7} {row['activation']:5} {row['dtype']:7} ratio {row['ratio']:.2f}\n")

  result = run(cells, activations, dtypes, repeats, arch_cases, arch_budget, args.seed, progress)
  if args.plot:
    if _has_matplotlib():
      plot(result, args.plot)
      result["plot"] = args.plot
    else:
      sys.stderr.write("bpref bench: --plot needs matplotlib (pip install 'bpref[plot]'); skipped\n")
  if args.json:
    print(json.dumps(result, indent=2))
  else:
    print(markdown_table(result) if args.markdown else format_table(result))
  return 0
