"""The Python half of scripts/gpu_check.sh (issue 17): one step per call, its JSON on stdout.

  python scripts/gpu_check.py env [--nvidia-smi FILE]     JAX, backend, devices, the GPU
  python scripts/gpu_check.py precision [--quick]        TF32 (Precision.DEFAULT) against HIGHEST and the referee
  python scripts/gpu_check.py oracle [--quick]           bpref.oracle.check on a jax.grad candidate
  python scripts/gpu_check.py sharding [--quick]         bpref.shard_batch / data_parallel against one device
  python scripts/gpu_check.py matmul [--quick]           a large float32 matmul's GFLOP/s (GPU only)
  python scripts/gpu_check.py record NAME --rc RC --seconds S --limit L --stdout F --log F --out DIR
  python scripts/gpu_check.py summary --out DIR          the table of DIR/*.json, and DIR/summary.json

Every step prints {"status": "ok" | "fail" | "skipped" | "info", "headline": ..., ...}.
``record`` (stdlib only) wraps a step's stdout, exit code and time into DIR/NAME.json, so a
step killed by ``timeout`` or one that crashed is recorded too.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os
import re
import sys
import time
from pathlib import Path

SEED = 17
PLANTED = 1e-3  # the relative bug the TF32 model must not let through


# ---------------------------------------------------------------- env

def step_env(args) -> dict:
  import jax
  import jaxlib
  smi = {}
  if args.nvidia_smi and os.path.exists(args.nvidia_smi):
    text = Path(args.nvidia_smi).read_text()
    m = re.search(r"Driver Version:\s*([\d.]+).*?CUDA Version:\s*([\d.]+)", text, re.S)
    if m:
      smi = {"driver": m.group(1), "cuda": m.group(2)}
    smi["gpus"] = re.findall(r"^(NVIDIA[^,\n]*), [\d.]+, ", text, re.M)  # the --query-gpu csv
    smi["query"] = [line for line in text.splitlines() if line.startswith(("name,", "NVIDIA"))]
  devices = jax.devices()
  backend = jax.default_backend()
  out = {"status": "ok", "python": sys.version.split()[0], "jax": jax.__version__,
         "jaxlib": jaxlib.__version__, "backend": backend,
         "devices": [f"{d.platform}:{d.device_kind}" for d in devices], "nvidia_smi": smi}
  out["headline"] = (f"jax {jax.__version__}, backend {backend}, {len(devices)} x "
                     f"{devices[0].device_kind}; driver {smi.get('driver', '-')}, CUDA {smi.get('cuda', '-')}")
  if smi.get("gpus"):
    out["headline"] += f"; {len(smi['gpus'])} x {smi['gpus'][0]}"
  if smi.get("gpus") and backend == "cpu" and os.environ.get("JAX_PLATFORMS") != "cpu":
    out["status"] = "fail"
    out["headline"] = "nvidia-smi sees a GPU but JAX runs on the CPU: " + out["headline"]
  return out


# ---------------------------------------------------------------- precision

def _problems(quick):
  """The random networks of the precision and sharding steps: small ones, and a few wide
  ones (widths 32-64, B = 32; the referee takes ~10 s on the widest) where XLA certainly sends float32 products to TF32."""
  import numpy as np
  from bpref.structures import Layer
  from bpref import problems
  rng = np.random.default_rng(SEED)
  out = [problems.random_problem(rng, np.float32) for _ in range(4 if quick else 20)]
  for width in ((16,) if quick else (32, 32, 64)):
    sizes = (width, width, width, 4)
    layers = tuple(Layer((rng.normal(size=(m, n)) / np.sqrt(n)).astype(np.float32),
                         (rng.normal(size=m) * 0.1).astype(np.float32), act)
                   for n, m, act in zip(sizes, sizes[1:], ("tanh", "gelu", "identity")))
    B = min(width, 32)
    x = rng.normal(size=(B, width)).astype(np.float32)
    t = rng.normal(size=(B, 4)).astype(np.float32)
    out.append(problems.Problem(layers, x, t, "squared_error", "mean"))
  return out


def _plant(vg):
  """vg with its largest W-gradient entry multiplied by 1 + PLANTED: a normwise error of PLANTED."""
  import numpy as np
  value, grads = vg
  grads = list(grads)
  l = max(range(len(grads)), key=lambda i: float(np.max(np.abs(grads[i].W))))
  W = np.array(grads[l].W, dtype=np.float32)
  i = np.unravel_index(np.argmax(np.abs(W)), W.shape)
  W[i] *= np.float32(1 + PLANTED)
  grads[l] = dataclasses.replace(grads[l], W=W)
  return value, tuple(grads)


def step_precision(args) -> dict:
  import jax
  import numpy as np
  import bpref
  from bpref import tolerance
  from bpref.error import worst_error
  from bpref.problems import problem_tolerance
  from bpref.witnesses import referee
  P = jax.lax.Precision
  backend = jax.default_backend()
  vg = jax.jit(bpref.value_and_grad, static_argnames=("loss", "reduction", "precision"))
  rows = []
  for p in _problems(args.quick):
    exact = referee.exact(p.params, p.x, p.t, p.loss, p.reduction)
    exact = (exact.value, exact.grads)
    got = {lvl: jax.device_get(vg(p.params, p.x, p.t, p.loss, p.reduction, precision=lvl))
           for lvl in (P.DEFAULT, P.HIGHEST)}
    base = problem_tolerance(p.params, p.x, np.float32)  # (T) at float32's u
    tol = {lvl: problem_tolerance(p.params, p.x, precision=lvl, backend=backend) for lvl in got}  # (T')
    row = {"problem": p.describe(),
           "u_default": tolerance.precision_unit_roundoff(np.float32, P.DEFAULT, backend),
           "tol_default": tol[P.DEFAULT], "tol_highest": tol[P.HIGHEST],
           "err_default_vs_referee": referee.worst_error(got[P.DEFAULT], exact),
           "err_highest_vs_referee": referee.worst_error(got[P.HIGHEST], exact),
           "err_default_vs_highest": worst_error(got[P.DEFAULT], got[P.HIGHEST]),
           "err_planted_vs_referee": referee.worst_error(_plant(got[P.DEFAULT]), exact)}
    row["within_model"] = (row["err_default_vs_referee"] <= row["tol_default"]
                           and row["err_highest_vs_referee"] <= row["tol_highest"]
                           and row["err_default_vs_highest"] <= row["tol_default"] + row["tol_highest"])
    row["planted_rejected"] = row["err_planted_vs_referee"] > row["tol_default"]
    # the TF32 model itself, whatever the backend (on the GPU this is tol_default), and the
    # cruder (T) at u = 2^-10 it replaced
    row["tol_tf32_model"] = problem_tolerance(p.params, p.x, precision=P.DEFAULT, backend="gpu")
    row["tol_tf32_crude"] = base * tolerance.tolerance_factor(np.float32, P.DEFAULT, "gpu")
    row["planted_rejected_by_tf32_model"] = row["err_planted_vs_referee"] > row["tol_tf32_model"]
    rows.append(row)
  n = len(rows)
  within = sum(r["within_model"] for r in rows)
  rejected = sum(r["planted_rejected"] for r in rows)
  worst = max(rows, key=lambda r: r["err_default_vs_referee"] / r["tol_default"])
  out = {"backend": backend, "networks": n, "within_model": within, "planted_rejected": rejected,
         "planted_relative_error": PLANTED,
         "max_err_default_vs_referee": max(r["err_default_vs_referee"] for r in rows),
         "max_err_highest_vs_referee": max(r["err_highest_vs_referee"] for r in rows),
         "max_err_default_vs_highest": max(r["err_default_vs_highest"] for r in rows),
         "min_tol_default": min(r["tol_default"] for r in rows),
         "max_err_over_tol_default": worst["err_default_vs_referee"] / worst["tol_default"],
         "min_tol_tf32_model": min(r["tol_tf32_model"] for r in rows),
         "planted_rejected_by_tf32_model": sum(r["planted_rejected_by_tf32_model"] for r in rows),
         "tf32_visible": any(r["err_default_vs_highest"] > 0 for r in rows), "rows": rows}
  # A relative bug of PLANTED is separable from rounding only where rounding stays well below it;
  # TF32's own error (2 u_op per product) is of that size, so the planted count is a figure,
  # and the verdict is the model's: every network within it.
  out["tf32_noise_over_planted"] = out["max_err_default_vs_highest"] / PLANTED
  out["min_tol_tf32_crude"] = min(r["tol_tf32_crude"] for r in rows)
  problems_found = []
  if within < n:
    problems_found.append(f"{n - within} outside the model")
  if rejected < n:
    problems_found.append(f"a {PLANTED:g} bug passes on {n - rejected} (TF32's own error reaches "
                          f"{out['tf32_noise_over_planted']:.2g} x {PLANTED:g})")
  out["status"] = "fail" if within < n else "ok"
  out["headline"] = (f"DEFAULT vs referee <= {out['max_err_default_vs_referee']:.2e} "
                     f"(<= {out['max_err_over_tol_default']:.2g} x tol), vs HIGHEST "
                     f"<= {out['max_err_default_vs_highest']:.2e}; within {within}/{n}, "
                     f"{PLANTED:g} bug rejected {rejected}/{n} (tol >= {out['min_tol_default']:.1e}; "
                     f"(T') at TF32 >= {out['min_tol_tf32_model']:.1e}, crude (T) >= "
                     f"{out['min_tol_tf32_crude']:.1e}; (T') rejects it "
                     f"{out['planted_rejected_by_tf32_model']}/{n})"
                     + ("; " + "; ".join(problems_found) if problems_found else ""))
  return out


# ---------------------------------------------------------------- oracle

def jax_grad_candidate(precision):
  """A candidate (docs/oracle.md protocol): jax.nn layers and bpref's loss values, jax.grad
  jitted on the default device (the GPU when there is one), matmuls at ``precision``."""
  import functools
  import jax
  import jax.numpy as jnp
  import numpy as np
  from bpref.bridges import _jax_autodiff as ad

  @functools.partial(jax.jit, static_argnames=("activations", "loss"))
  def value_and_grad(wb, x, t, activations, loss):
    def C(wb):
      a = x
      for W, b, act in zip(wb[0], wb[1], activations):
        z = jnp.matmul(a, W.T, precision=precision)
        a = ad.FUNCTIONS[act](z if b is None else z + b[None, :])
      return ad.reduced_loss(loss, "mean", a, t)
    return ad.value_and_grad(C, wb)

  def grads(weights, biases, activations, loss, x, t):
    biases = [None] * len(weights) if biases is None else biases
    value, (dW, db) = value_and_grad((list(weights), list(biases)), x, t, tuple(activations), loss)
    grads.platforms.add(value.devices().pop().platform)
    return ([np.asarray(g) for g in dW], [None if g is None else np.asarray(g) for g in db],
            float(value))
  grads.platforms = set()
  return grads


def step_oracle(args) -> dict:
  import jax
  import bpref.oracle
  from bpref.bridges import _jax_autodiff as ad
  jax.config.update("jax_enable_x64", True)
  P = jax.lax.Precision
  gpu = jax.default_backend() == "gpu"
  # a smaller domain than the precision step's (all activations and losses cost ~55 probes,
  # ~1 s each of compiling): the usual activations, a softmax output, two losses
  domain = dict(activations=("identity", "relu", "tanh", "sigmoid", "gelu", "softmax"),
                losses=("squared_error", "cross_entropy"), max_depth=3, max_width=5, max_batch=4,
                examples=10, seed=SEED, isolate=False)  # the candidate is a closure, on this GPU
  if args.quick:
    domain.update(activations=("identity", "tanh"), losses=("squared_error",), max_depth=2, examples=0)
  runs = {}
  for dtype, lvl in (("float64", P.HIGHEST), ("float32", P.HIGHEST), ("float32", P.DEFAULT)):
    name = f"{dtype}/{lvl.name}"
    if lvl == P.DEFAULT and not gpu:
      runs[name] = {"verdict": "skipped", "reason": "no TF32 off the GPU (DEFAULT is HIGHEST)"}
      continue
    cand = jax_grad_candidate(lvl)
    # TF32 is expected to fail the float32 model: keep its shrinking short
    rep = bpref.oracle.check(cand, dtype=dtype, shrink_budget=120 if lvl == P.HIGHEST else 15, **domain)
    runs[name] = {"verdict": rep.verdict, "cases": rep.cases, "calls": rep.calls,
                  "seconds": round(rep.seconds, 2), "platforms": sorted(cand.platforms),
                  "kind": rep.kind, "message": rep.message, "codes": list(rep.codes), "notes": rep.notes,
                  "errors": rep.errors, "tolerance": rep.tolerance}
  # TF32 against the float32 model of the oracle is information: it is expected to fail
  judged = [r for n, r in runs.items() if not n.endswith("DEFAULT")]
  ok = all(r["verdict"] == "pass" for r in judged)
  return {"status": "ok" if ok else "fail", "domain": {k: list(v) if isinstance(v, tuple) else v
                                                       for k, v in domain.items()},
          "runs": runs,
          "headline": "; ".join(f"{n} {r['verdict']}" + (f" ({r['cases']} nets on {','.join(r['platforms'])})"
                                                          if "cases" in r else "")
                                for n, r in runs.items())}


# ---------------------------------------------------------------- sharding

def step_sharding(args) -> dict:
  import jax
  import numpy as np
  import bpref
  from bpref import problems
  from bpref.error import worst_error
  from bpref.scale import sharding
  k = len(jax.devices())
  if k < 2:
    return {"status": "skipped", "headline": "skipped: 1 device", "devices": k}
  mesh = sharding.make_mesh((k,), ("data",))
  sharded = sharding.data_parallel(bpref.value_and_grad, mesh)
  single = jax.jit(bpref.value_and_grad, static_argnames=("loss", "reduction", "precision"))
  rng = np.random.default_rng(SEED)
  rows = []
  for p in _problems(args.quick):
    B = 2 * k
    x = rng.normal(size=(B, p.x.shape[1])).astype(np.float32)
    t = problems.targets(rng, p.loss, (B, p.t.shape[1])).astype(np.float32)
    xs, ts = sharding.shard_batch(mesh, x, t)
    got = sharded(sharding.shard_params(mesh, p.params), xs, ts, p.loss, p.reduction)
    ref = jax.device_get(single(p.params, x, t, p.loss, p.reduction))
    err = worst_error(jax.device_get(got), ref)
    tol = 2 * problems.problem_tolerance(p.params, x, np.float32)
    rows.append({"problem": p.describe(), "batch": B, "err": err, "tol": tol, "ok": err <= tol,
                 "x_devices": len(xs.sharding.device_set), "grad_devices": len(got[1][0].W.sharding.device_set)})
  bad = sum(not r["ok"] for r in rows)
  return {"status": "fail" if bad else "ok", "devices": k, "rows": rows,
          "headline": f"{k} devices, {len(rows)} nets: max err {max(r['err'] for r in rows):.2e}, "
                      f"{bad} above (T)"}


# ---------------------------------------------------------------- matmul peak

def matmul_peak(n: int, repeats: int = 10) -> dict:
  """GFLOP/s of an (n, n) x (n, n) float32 matmul at each precision, median of ``repeats``."""
  import jax
  import jax.numpy as jnp
  x = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  out = {"n": n}
  for lvl in (jax.lax.Precision.HIGHEST, jax.lax.Precision.DEFAULT):
    f = jax.jit(lambda a, lvl=lvl: jnp.matmul(a, a, precision=lvl))
    f(x).block_until_ready()
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      f(x).block_until_ready()
      times.append(time.perf_counter() - t0)
    out[f"gflops_{lvl.name.lower()}"] = 2 * n ** 3 / sorted(times)[len(times) // 2] / 1e9
  return out


def step_matmul(args) -> dict:
  import jax
  if jax.default_backend() != "gpu":
    return {"status": "skipped", "headline": f"skipped: GPU only (backend {jax.default_backend()})"}
  out = matmul_peak(2048 if args.quick else 8192)
  out["status"] = "ok"
  out["headline"] = (f"n={out['n']}: HIGHEST {out['gflops_highest']:.0f} GFLOP/s, "
                     f"DEFAULT (TF32) {out['gflops_default']:.0f} GFLOP/s")
  return out


# ---------------------------------------------------------------- record and summary

def _headline(name, res) -> str:
  if "headline" in res:
    return res["headline"]
  if name.startswith("verify"):  # bpref verify --json
    parts = [f"{'PASS' if res.get('passed') else 'FAIL'} on {res.get('backend')}"]
    for r in res.get("table", []):
      if r["check"] == "grad":
        parts.append(f"{r['dtype']} grad {r['max_error']:.1e}/{r['tolerance']:.0e} {r['verdict']}")
    bad = [f"{r['dtype']} {r['witness']}" for r in res.get("witnesses", {}).get("table", [])
           if r["verdict"] not in ("ok", "info")]
    return ", ".join(parts) + (f"; witnesses failing: {', '.join(bad)}" if bad else "")
  if name == "bench":  # bpref bench --json
    s = res.get("summary", {})
    best = max(res.get("grid", []), key=lambda r: r["gflops_bpref"], default=None)
    arch = res.get("architectures", {}).get("fast", {})
    return (f"ratio geomean {s.get('ratio_geomean', math.nan):.2f} (max {s.get('ratio_max', math.nan):.2f})"
            + (f"; best {best['cell']}/{best['activation']} {best['gflops_bpref']:.3g} GFLOP/s "
               f"({best['fraction_of_matmul']:.2f} of plain matmul)" if best else "")
            + (f"; fast {arch.get('warm_per_second', 0):.0f} arch/s warm" if arch else ""))
  return ""


def record(args) -> dict:
  text = Path(args.stdout).read_text() if os.path.exists(args.stdout) else ""
  try:
    res = json.loads(text) if text.strip() else None
  except json.JSONDecodeError:
    res = None
  if args.rc in (124, 137):
    status = "timeout"
  elif isinstance(res, dict) and "status" in res:
    status = res["status"]
  elif args.rc == 0 and res is not None:
    status = "ok" if res.get("passed", True) else "fail"
  else:
    status = "fail" if res is not None else "error"
  log = Path(args.log).read_text().splitlines()[-15:] if args.log and os.path.exists(args.log) else []
  headline = _headline(args.name, res) if isinstance(res, dict) else ""
  if status in ("timeout", "error") and not headline:
    headline = (f"killed after {args.limit} s" if status == "timeout"
                else f"rc {args.rc}: " + (log[-1] if log else "no output"))
  out = {"step": args.name, "status": status, "rc": args.rc, "seconds": args.seconds,
         "limit_s": args.limit, "headline": headline, "result": res,
         "log_tail": log if status not in ("ok", "skipped") else []}
  with open(os.path.join(args.out, f"{args.name}.json"), "w") as f:
    json.dump(out, f, indent=1, default=str)
  return out


def summary(args) -> dict:
  steps = []
  order = ("install", "env", "verify_float32", "verify_float64", "precision", "oracle", "sharding",
           "bench", "matmul")
  paths = glob.glob(os.path.join(args.out, "*.json"))
  rank = lambda p: (order.index(os.path.basename(p)[:-5]) if os.path.basename(p)[:-5] in order  # noqa: E731
                    else len(order), p)
  for path in sorted(paths, key=rank):
    if os.path.basename(path) == "summary.json":
      continue
    d = json.load(open(path))
    if "step" in d:
      steps.append({k: d[k] for k in ("step", "status", "rc", "seconds", "limit_s", "headline")})
  out = {"steps": steps, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
  with open(os.path.join(args.out, "summary.json"), "w") as f:
    json.dump(out, f, indent=1)
  print(f"\n{'step':16} {'status':8} {'time':>9}  figures")
  print("-" * 100)
  for s in steps:
    print(f"{s['step']:16} {s['status']:8} {s['seconds']:4d}/{s['limit_s']:<4d}  {s['headline']}")
  return out


STEPS = {"env": step_env, "precision": step_precision, "oracle": step_oracle,
         "sharding": step_sharding, "matmul": step_matmul}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("step", choices=tuple(STEPS) + ("record", "summary"))
  ap.add_argument("name", nargs="?")
  ap.add_argument("--quick", action="store_true", help="fewer and smaller networks (the CPU test)")
  ap.add_argument("--nvidia-smi", default=None)
  ap.add_argument("--rc", type=int, default=0)
  ap.add_argument("--seconds", type=int, default=0)
  ap.add_argument("--limit", type=int, default=0)
  ap.add_argument("--stdout", default="")
  ap.add_argument("--log", default="")
  ap.add_argument("--out", default=os.environ.get("OUT", "gpu_out"))
  args = ap.parse_args(argv)
  if args.step == "record":
    record(args)
  elif args.step == "summary":
    summary(args)
  else:
    print(json.dumps(STEPS[args.step](args), default=str))
  return 0


if __name__ == "__main__":
  sys.exit(main())
