#!/usr/bin/env python
"""Mutation testing of bpref's handwritten core: the suite's power as a measured number.

Each mutation is a textual patch of one core file (bpref/activations.py, losses.py,
network.py, backprop.py): an exact old text, which must occur exactly once, and the
text that replaces it. Each is a mistake a careful person could make while writing
backprop by hand; two of them (marked "accuracy") leave the mathematics right and
change only the floating-point accuracy.

For every mutation the script patches a private copy of the repository (never the
checkout it runs from), runs the chosen test files with pytest and
``python -m bpref verify --quick`` inside that copy, and reports which tests fail and
which verify rows read FAIL. A test that also fails on the unmutated copy (the
baseline run) does not count as a kill. Parametrized cases of one test
function count as one test: "tests" in the table are distinct test functions.

It is slow (minutes per mutation, all of it XLA compilation and hypothesis) and it
does not run in CI. The tests run under the hypothesis profile ``mutate`` (the ``dev``
draws, with failing examples reported unshrunk: shrinking a killed mutation's failures
would cost more than the run). A shared XLA compilation cache (``--cache-dir``) lets
every mutation reuse the compilations that it does not change.

Usage:

    python scripts/mutate.py                      # every mutation, a progress line each
    python scripts/mutate.py --markdown           # and the table as markdown at the end
    python scripts/mutate.py --only tanh_prime_sign,bce_dy_sign --jobs 2
    python scripts/mutate.py --list
    python scripts/mutate.py --tests tests/test_backprop.py --no-verify
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_TESTS = (
    "tests/test_backprop.py", "tests/test_identities.py", "tests/test_activations.py",
    "tests/test_losses.py", "tests/test_finite_diff.py", "proofs/test_errata.py",
    "proofs/test_symbolic.py", "tests/test_network.py", "tests/test_fast.py", "tests/test_referee.py")


@dataclasses.dataclass(frozen=True)
class Mutation:
  name: str
  file: str
  old: str
  new: str
  what: str
  accuracy_only: bool = False


A, L, N, B = "bpref/activations.py", "bpref/losses.py", "bpref/network.py", "bpref/backprop.py"

MUTATIONS = (
    # ------------------------------------------------------------ activations: f'
    Mutation("tanh_prime_sign", A,
             "  return 4 * e / (1 + e) ** 2",
             "  return -4 * e / (1 + e) ** 2",
             "tanh'(z) with the wrong sign"),
    Mutation("sigmoid_prime_missing_factor", A,
             "  return e / (1 + e) ** 2",
             "  return e / (1 + e)",
             "sigma'(z) = sigma(-z), the factor sigma(z) missing"),
    Mutation("gelu_prime_drop_z_phi", A,
             "  return _normal_cdf(z) + z * _INV_SQRT_2PI * jnp.exp(-0.5 * z * z)",
             "  return _normal_cdf(z)",
             "gelu'(z) = Phi(z), the term z phi(z) dropped"),
    Mutation("gelu_tanh_prime_chain", A,
             "  du2 = 2 * _GELU_C * (1 + 3 * _GELU_K * z * z)",
             "  du2 = 2 * _GELU_C * (1 + _GELU_K * z * z)",
             "gelu_tanh': d(z^3)/dz written as z^2 (the factor 3 missing)"),
    Mutation("elu_prime_negative", A,
             "  return jnp.where(z > 0, jnp.ones_like(z), jnp.exp(jnp.minimum(z, 0)))",
             "  return jnp.where(z > 0, jnp.ones_like(z), jnp.expm1(jnp.minimum(z, 0)))",
             "elu'(z) = exp(z) - 1 for z <= 0 (f(z) in place of f(z) + alpha)"),
    Mutation("selu_prime_missing_scale", A,
             "  return SELU_SCALE * jnp.where(z > 0, jnp.ones_like(z), SELU_ALPHA * jnp.exp(",
             "  return jnp.where(z > 0, jnp.ones_like(z), SELU_ALPHA * jnp.exp(",
             "selu'(z) without the factor scale"),
    Mutation("silu_prime_sigma_sign", A,
             "  return sigmoid(z) * (1 + z * sigmoid(-z))",
             "  return sigmoid(z) * (1 + z * sigmoid(z))",
             "silu'(z) = sigma(z) (1 + z sigma(z)): sigma(z) in place of 1 - sigma(z)"),
    Mutation("softplus_prime_is_sigmoid_prime", A,
             'Activation("softplus", _softplus, sigmoid,',
             'Activation("softplus", _softplus, _sigmoid_df,',
             "softplus'(z) = sigma'(z), one derivative too many"),
    Mutation("softsign_prime_unsquared", A,
             "  return 1 / (1 + jnp.abs(z)) ** 2",
             "  return 1 / (1 + jnp.abs(z))",
             "softsign'(z) = 1 / (1 + |z|), the square missing"),
    Mutation("relu_prime_kink", A,
             "  return _nan_through(z, jnp.where(z > 0, jnp.ones_like(z), jnp.zeros_like(z)))",
             "  return _nan_through(z, jnp.where(z >= 0, jnp.ones_like(z), jnp.zeros_like(z)))",
             "relu'(0) = 1 in relu'(z) (the z-route; the backward pass takes relu' from a)"),
    # ------------------------------------------------------------ softmax Jacobian
    Mutation("softmax_vjp_diagonal", A,
             "  out = a * (g - jnp.sum(g * a, axis=-1, keepdims=True))",
             "  out = a * (1 - a) * g",
             "softmax VJP with the diagonal of the Jacobian only"),
    Mutation("softmax_jacobian_diagonal", A,
             "  jac = a[..., :, None] * eye - a[..., :, None] * a[..., None, :]",
             "  jac = (a * (1 - a))[..., :, None] * eye",
             "softmax Jacobian (lambda_L) with its diagonal only"),
    # ------------------------------------------------------------ losses
    Mutation("squared_error_factor_2", L,
             "  return -2 * (t - y)",
             "  return -(t - y)",
             "squared error dC/dy without the factor 2"),
    Mutation("mean_missing_1_over_B", L,
             '  return 1.0 / batch if reduction == "mean" else 1.0',
             "  return 1.0",
             'reduction "mean": the gradient not divided by B'),
    Mutation("softmax_ce_assumes_sum_t_1", L,
             "  return jnp.where(at_k, (s - t) - s * rest, p * s - t)",
             "  return jnp.where(at_k, (1 - t) - rest, p - t)",
             "softmax cross-entropy dC/dy = softmax(y) - t, right only when the targets sum to 1"),
    Mutation("bce_dy_sign", L,
             "  return -_x_over_y(t, y) + _x_over_y(1 - t, 1 - y)",
             "  return _x_over_y(t, y) - _x_over_y(1 - t, 1 - y)",
             "binary cross-entropy dC/dy with the wrong sign"),
    Mutation("sigmoid_bce_stable_branch", L,
             "  return jnp.where(y > 0, (1 - t) - sigmoid(-y), sigmoid(y) - t)",
             "  return jnp.where(y > 0, (1 - t) - sigmoid(y), sigmoid(y) - t)",
             "sigmoid BCE dC/dy, y > 0 branch: sigma(y) in place of sigma(-y)"),
    Mutation("huber_dy_unclipped", L,
             "  return jnp.clip(y - t, -1, 1)",
             "  return y - t",
             "huber dC/dy = y - t, the clip to [-1, 1] missing"),
    # ------------------------------------------------------------ the recursions
    Mutation("delta_wrong_layer_activation", B,
             "derivative(params[l - 1].activation, tape.z[l - 1], tape.a[l])  # (24)\n"
             "    delta = back",
             "derivative(params[l].activation, tape.z[l - 1], tape.a[l])  # (24)\n"
             "    delta = back",
             "(37): f' of layer l+1's activation in place of layer l's"),
    Mutation("dW_transposed", B,
             "  dW = jnp.matmul(delta.T, a_prev, precision=precision)",
             "  dW = jnp.matmul(a_prev.T, delta, precision=precision)",
             "(39) transposed: dC/dW_l = A_{l-1}^T D_l"),
    Mutation("per_example_dW_transposed", B,
             "    dW = delta[:, :, None] * a_prev[:, None, :]",
             "    dW = a_prev[:, :, None] * delta[:, None, :]",
             "(39) per example, transposed"),
    Mutation("db_wrong_axis", B,
             "jnp.sum(delta, axis=0) if bias else None  # dC/db_l = delta_l",
             "jnp.sum(delta, axis=-1) if bias else None  # dC/db_l = delta_l",
             "dC/db_l summed over the units, not the batch"),
    Mutation("input_grad_W_transposed", B,
             "  dx = pull_back(delta_1, params[0].W, precision=precision)",
             "  dx = pull_back(delta_1, params[0].W.T, precision=precision)",
             "dC/dx = delta_1 W_1^T"),
    Mutation("lambdas_order", B,
             "  return unbatched(lams, single)",
             "  return unbatched(lams[::-1], single)",
             "lambdas returned in recursion order (lambda_L first)"),
    # ------------------------------------------------------------ accuracy only
    Mutation("tanh_prime_cancels", A,
             'Activation("tanh", jnp.tanh, _tanh_df,',
             'Activation("tanh", jnp.tanh, lambda z: 1 - jnp.tanh(z) ** 2,',
             "tanh'(z) = 1 - tanh(z)^2: right, but 0 once tanh(z) rounds to 1", True),
    Mutation("sigmoid_prime_cancels", A,
             "  e = jnp.exp(-jnp.abs(z))\n  return e / (1 + e) ** 2",
             "  s = sigmoid(z)\n  return s * (1 - s)",
             "sigma'(z) = sigma(z) (1 - sigma(z)): right, but 0 once sigma(z) rounds to 1", True),
)


# ---------------------------------------------------------------- running one mutation

@dataclasses.dataclass
class Result:
  name: str
  failed_tests: list  # test ids (file::name[param]) that fail here and not on the baseline
  verify_rows: list  # verify rows that read FAIL here and not on the baseline
  verify_crashed: bool = False
  tests_crashed: bool = False
  seconds: float = 0.0
  note: str = ""

  @property
  def test_functions(self) -> list:
    return sorted({re.sub(r"\[.*\]$", "", t) for t in self.failed_tests})

  @property
  def verify_killed(self) -> bool:
    return self.verify_crashed or bool(self.verify_rows)


def _copy_tree(dest: Path, ref: str | None) -> None:
  """The repository's files (the working tree, or ``ref``'s tree) in ``dest``."""
  dest.mkdir(parents=True)
  if ref is not None:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return
  files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--cached", "--others",
                          "--exclude-standard", "-z"], check=True,
                         capture_output=True).stdout.decode().split("\0")
  for rel in filter(None, files):
    src = ROOT / rel
    if src.is_file():
      (dest / rel).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(src, dest / rel)


def _env(copy: Path, cache_dir: str | None) -> dict:
  env = dict(os.environ)
  env["PYTHONPATH"] = str(copy)
  env.setdefault("BPREF_PROFILE", "mutate")  # a failing example is not shrunk: kills cost no more
  env.pop("CI", None)
  env.setdefault("JAX_PLATFORMS", "cpu")
  if cache_dir:
    env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  return env


def _check_import(copy: Path, env: dict) -> None:
  """Fail loudly unless python in ``copy`` imports the copy's bpref, not an installed one."""
  out = subprocess.run([sys.executable, "-c", "import bpref; print(bpref.__file__)"], cwd=copy,
                       env=env, capture_output=True, text=True, check=True).stdout.strip()
  if not Path(out).resolve().is_relative_to(copy.resolve()):
    raise RuntimeError(f"the copy in {copy} imports bpref from {out}, not from the copy")


def _run_tests(copy: Path, env: dict, tests, timeout: float, seed: int) -> tuple[set, bool, str]:
  xml = copy / ".mutate-junit.xml"
  if xml.exists():
    xml.unlink()
  shutil.rmtree(copy / ".hypothesis", ignore_errors=True)  # no examples replayed from another run
  cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tb=no", "-rf",
         f"--hypothesis-seed={seed}", f"--junitxml={xml}", *tests]
  try:
    proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return set(), True, f"pytest ran past {timeout:.0f} s"
  if not xml.exists():
    return set(), True, f"pytest exited {proc.returncode} without a report: {proc.stdout[-300:]}"
  failed = set()
  for case in ET.parse(xml).getroot().iter("testcase"):
    if case.find("failure") is not None or case.find("error") is not None:
      classname = case.get("classname", "")
      if not classname:  # a collection error: the module failed to import
        failed.add(case.get("name", "").replace(".", "/") + ".py::(collection)")
        continue
      parts = classname.split(".")
      # classname is dotted module[.Class]; map it back to file::[Class::]name
      module = [p for p in parts if not p[:1].isupper()]
      klass = [p for p in parts if p[:1].isupper()]
      test_id = "/".join(module) + ".py::" + "::".join(klass + [case.get("name", "")])
      failed.add(test_id)
  return failed, False, ""


def _run_verify(copy: Path, env: dict, timeout: float) -> tuple[set, bool, str]:
  cmd = [sys.executable, "-m", "bpref", "verify", "--quick", "--json", "--no-progress"]
  try:
    proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return set(), True, f"verify ran past {timeout:.0f} s"
  try:
    summary = json.loads(proc.stdout)
  except json.JSONDecodeError:
    last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return set(), True, f"verify crashed: {last[:200]}"
  rows = {f"{r['dtype']} {r['check']}" for r in summary["table"] if r["verdict"] == "FAIL"}
  rows |= {f"{r['dtype']} witness:{r['witness']}"
           for r in summary.get("witnesses", {}).get("table", []) if r["verdict"] == "FAIL"}
  return rows, False, ""


def _apply(copy: Path, mutation: Mutation) -> str:
  """Patch ``copy`` in place; return the original text of the file."""
  path = copy / mutation.file
  text = path.read_text()
  count = text.count(mutation.old)
  if count != 1:
    raise ValueError(f"{mutation.name}: the old text occurs {count} times in {mutation.file} "
                     "(it must occur exactly once)")
  path.write_text(text.replace(mutation.old, mutation.new))
  return text


def run_one(copy: Path, mutation: Mutation | None, args) -> Result:
  start = time.perf_counter()
  env = _env(copy, args.cache_dir)
  original = _apply(copy, mutation) if mutation is not None else None
  try:
    failed, tests_crashed, note = set(), False, ""
    if args.tests:
      failed, tests_crashed, note = _run_tests(copy, env, args.tests, args.timeout, args.seed)
    rows, verify_crashed, vnote = set(), False, ""
    if not args.no_verify:
      rows, verify_crashed, vnote = _run_verify(copy, env, args.timeout)
  finally:
    if original is not None:
      (copy / mutation.file).write_text(original)
  return Result(mutation.name if mutation else "(none)", sorted(failed), sorted(rows),
                verify_crashed, tests_crashed, round(time.perf_counter() - start, 1),
                "; ".join(filter(None, (note, vnote))))


def subtract(result: Result, baseline: Result | None) -> Result:
  """``result`` without the failures that the unmutated copy has too."""
  if baseline is None:
    return result
  return dataclasses.replace(
      result, failed_tests=sorted(set(result.failed_tests) - set(baseline.failed_tests)),
      verify_rows=sorted(set(result.verify_rows) - set(baseline.verify_rows)))


# ---------------------------------------------------------------- reporting

def _short(test_id: str) -> str:
  return test_id.rsplit("/", 1)[-1].replace(".py::", "::")


def describe(result: Result) -> str:
  tests = result.test_functions
  verify = ("crashed" if result.verify_crashed else ", ".join(result.verify_rows) or "survives")
  return (f"{result.name}: {len(tests)} tests ({len(result.failed_tests)} cases) "
          f"[{', '.join(_short(t) for t in tests) or 'survives'}]; verify --quick: {verify}"
          f"{'; ' + result.note if result.note else ''} ({result.seconds} s)")


def markdown(results, mutations, args) -> str:
  by_name = {m.name: m for m in mutations}
  lines = ["| # | mutation | file | tests that kill it | verify --quick rows that FAIL |",
           "| --- | --- | --- | --- | --- |"]
  for i, r in enumerate(results, 1):
    m = by_name[r.name]
    tests = r.test_functions
    if len(tests) <= 3:  # the weak spots: every name
      listed = ", ".join(f"`{_short(t)}`" for t in tests)
    else:  # how many in each file; the progress lines and --json name them all
      per_file = {}
      for t in tests:
        stem = _short(t).split("::")[0].removeprefix("test_")
        per_file[stem] = per_file.get(stem, 0) + 1
      listed = ", ".join(f"{f} {n}" for f, n in per_file.items())
    test_cell = f"**{len(tests)}**: {listed}" if tests else "**0**"
    if r.tests_crashed:
      test_cell += f" ({r.note})"
    if args.no_verify:
      verify_cell = "not run"
    elif r.verify_crashed:
      verify_cell = "killed (verify crashed)"
    elif r.verify_rows:
      by_dtype = {}
      for row in r.verify_rows:
        dtype, check = row.split(" ", 1)
        by_dtype.setdefault(dtype, []).append(check)
      verify_cell = f"**{len(r.verify_rows)}**: " + "; ".join(
          f"{dtype}: {', '.join(checks)}" for dtype, checks in by_dtype.items())
    else:
      verify_cell = "**survives**"
    acc = " (accuracy only)" if m.accuracy_only else ""
    what = m.what.replace("|", "\\|")  # a |z| in the text is not a column
    lines.append(f"| {i} | `{m.name}`: {what}{acc} | {m.file.split('/')[-1]} | "
                 f"{test_cell} | {verify_cell} |")
  two = sum(len(r.test_functions) >= 2 for r in results)
  lines.append("")
  lines.append(f"Killed by at least two tests: {two} of {len(results)}. "
               + ("" if args.no_verify else
                  f"Killed by `bpref verify --quick`: "
                  f"{sum(r.verify_killed for r in results)} of {len(results)}."))
  return "\n".join(lines)


def _write_json(path, baseline, args, raw) -> None:
  """Every run so far: the baseline and each mutation's raw failures (baseline not taken off)."""
  Path(path).write_text(json.dumps(
      {"baseline": None if baseline is None else dataclasses.asdict(baseline),
       "tests": args.tests, "verify": not args.no_verify,
       "results": [dataclasses.asdict(r) for r in raw]}, indent=2))


def _from_json(path, args) -> int:
  """The markdown table of a results file, complete or not."""
  data = json.loads(Path(path).read_text())
  baseline = None if data["baseline"] is None else Result(**data["baseline"])
  args.no_verify = not data["verify"]
  ordered = [subtract(Result(**r), baseline) for r in data["results"]]
  print(markdown(ordered, MUTATIONS, args))
  if len(ordered) < len(MUTATIONS):
    done = {r.name for r in ordered}
    print(f"\nPartial: {len(ordered)} of {len(MUTATIONS)} mutations measured; not measured: "
          + ", ".join(f"`{m.name}`" for m in MUTATIONS if m.name not in done) + ".")
  if baseline is None:
    print("\nNo baseline in this file: every failure counts as a kill.")
  return 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--only", default=None, help="comma-separated mutation names")
  parser.add_argument("--jobs", type=int, default=1, help="mutations run at once (default 1)")
  parser.add_argument("--tests", nargs="*", default=list(DEFAULT_TESTS),
                      help="test files for pytest (default: the core's test files; none: skip)")
  parser.add_argument("--no-verify", action="store_true", help="skip bpref verify --quick")
  parser.add_argument("--no-baseline", action="store_true",
                      help="skip the unmutated run (every failure then counts as a kill)")
  parser.add_argument("--ref", default=None,
                      help="mutate this git ref's tree (default: the working tree's files)")
  parser.add_argument("--cache-dir", default=None,
                      help="XLA compilation cache shared by the runs (default: a temporary one)")
  parser.add_argument("--seed", type=int, default=0,
                      help="hypothesis seed: every run draws the same examples (default 0)")
  parser.add_argument("--timeout", type=float, default=3600, help="seconds per pytest or verify run")
  parser.add_argument("--markdown", action="store_true", help="print the table as markdown at the end")
  parser.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
  parser.add_argument("--list", action="store_true", help="list the mutations and exit")
  parser.add_argument("--from-json", default=None, metavar="PATH",
                      help="print the markdown table of a --json file (a stopped run's too) and exit")
  parser.add_argument("--keep", action="store_true", help="keep the copies (their paths are printed)")
  args = parser.parse_args(argv)

  if args.from_json:
    return _from_json(args.from_json, args)
  mutations = list(MUTATIONS)
  if args.only:
    names = args.only.split(",")
    unknown = sorted(set(names) - {m.name for m in MUTATIONS})
    if unknown:
      parser.error(f"unknown mutation(s) {', '.join(unknown)}; --list names them")
    mutations = [m for m in MUTATIONS if m.name in names]
  if args.list:
    for m in mutations:
      print(f"{m.name:34s} {m.file:22s} {m.what}{' (accuracy only)' if m.accuracy_only else ''}")
    return 0
  for m in mutations:  # every old text occurs once in the tree to be mutated, before any run
    text = (ROOT / m.file).read_text() if args.ref is None else subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{args.ref}:{m.file}"], check=True,
        capture_output=True, text=True).stdout
    if text.count(m.old) != 1:
      parser.error(f"{m.name}: the old text occurs {text.count(m.old)} times in {m.file}")

  work = Path(tempfile.mkdtemp(prefix="bpref-mutate-"))
  args.cache_dir = os.path.abspath(args.cache_dir) if args.cache_dir else str(work / "xla-cache")
  jobs = max(1, min(args.jobs, len(mutations) + 1))
  copies = []
  for j in range(jobs):
    copy = work / f"copy{j}"
    _copy_tree(copy, args.ref)
    _check_import(copy, _env(copy, None))
    copies.append(copy)
  print(f"{len(mutations)} mutations, {jobs} at a time, in {work}; tests: "
        f"{' '.join(args.tests) or 'none'}; verify --quick: {'no' if args.no_verify else 'yes'}",
        flush=True)

  free = list(copies)
  lock = threading.Lock()
  results = {}
  state = {}

  def task(mutation):
    with lock:
      copy = free.pop()
    try:
      result = run_one(copy, mutation, args)
    finally:
      with lock:
        free.append(copy)
    with lock:
      if mutation is None:
        print(f"baseline (unmutated): failing tests {result.failed_tests or 'none'}; failing verify "
              f"rows {result.verify_rows or 'none'}{'; ' + result.note if result.note else ''} "
              f"({result.seconds} s)", flush=True)
      else:
        results[mutation.name] = result
        print(f"[{len(results)}/{len(mutations)}] {describe(result)}", flush=True)
      if mutation is None:
        state["baseline"] = result
      if args.json:  # after every run, so that a stopped run leaves its partial table
        _write_json(args.json, state.get("baseline"), args, [results[m.name] for m in mutations
                                                              if m.name in results])
    return result

  # The baseline runs beside the mutations; the kills it explains are taken off at the end
  # (the progress lines above count every failure).
  todo = ([] if args.no_baseline else [None]) + mutations
  with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
    done = [pool.submit(task, m) for m in todo]
    baseline = None if args.no_baseline else done[0].result()
    for future in done:
      future.result()
  ordered = [subtract(results[m.name], baseline) for m in mutations]

  if args.json:
    _write_json(args.json, baseline, args, [results[m.name] for m in mutations])
  if args.markdown:
    print()
    print(markdown(ordered, mutations, args))
  if not args.keep:
    shutil.rmtree(work, ignore_errors=True)
  else:
    print(f"copies kept in {work}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
