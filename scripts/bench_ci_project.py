"""The example project's suite (examples/ci_project) cold and warm: what the persistent cache saves.

  python scripts/bench_ci_project.py [--repeats 1] [--workers 2]

Copies examples/ci_project (a class-based NumPy MLP and its pytest suite, which uses
bpref's plugin) to a fresh temporary folder and runs ``python -m pytest -q`` there:

* ``cold``: a new folder, so .pytest_cache/d/bpref-xla is empty and every XLA program compiles;
* ``warm``: the same folder again, the programs read back from that cache;
* ``cold -n W`` and ``warm -n W``: the same with pytest-xdist's W workers, in another folder.

Each time is the whole command's wall time, the interpreter's start and imports included (what
a CI job waits for); pytest's own time, the XLA compilations and the persistent-cache hits are
read off the run's last lines (the plugin's summary line). ``--repeats`` runs the sequence again
in fresh folders and keeps the best of each. The runs' environment has no CI variable,
BPREF_CACHE_DIR or BPREF_NO_CACHE, so the plugin picks the folder's own cache.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROJECT = ROOT / "examples" / "ci_project"

CI_VARIABLES = ("CI", "BUILD_NUMBER", "TF_BUILD", "BUILDKITE", "CIRCLECI", "CIRRUS_CI",
                "CODEBUILD_BUILD_ID", "GITHUB_ACTIONS", "GITLAB_CI", "HEROKU_TEST_RUN_ID",
                "TEAMCITY_VERSION")
"""The variables by which pytest or hypothesis decide that they run in CI."""

OWN = ("BPREF_CACHE_DIR", "BPREF_NO_CACHE", "BPREF_REPRODUCER_DIR", "BPREF_PROFILE", "CI_MLP_BUG",
       "PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT",
       "PYTEST_XDIST_TESTRUNUID", "COLUMNS")
"""Variables of the calling process (bpref's own suite, pytest, xdist) that a run must not inherit."""


@dataclasses.dataclass
class Run:
  """One ``python -m pytest`` run of the project."""
  returncode: int
  seconds: float  # the whole command's wall time
  output: str

  @property
  def summary(self) -> dict:
    """The plugin's line as numbers: checks, failed, references, compilations, cache_hits."""
    match = re.search(r"^bpref: (\d+) oracle checks(?: \((\d+) failed\))?, (\d+) reference "
                      r"evaluations; (\d+) XLA compilations(?:, (\d+) read)?", self.output, re.M)
    if not match:
      return {}
    keys = ("checks", "failed", "references", "compilations", "cache_hits")
    return {k: int(v or 0) for k, v in zip(keys, match.groups())}

  @property
  def pytest_seconds(self) -> float | None:
    match = re.search(r" in ([0-9.]+)s", self.output.strip().splitlines()[-1])
    return float(match.group(1)) if match else None


def copy_project(dest) -> pathlib.Path:
  """examples/ci_project copied to ``dest`` (created), without caches."""
  dest = pathlib.Path(dest)
  shutil.copytree(PROJECT, dest, dirs_exist_ok=True,
                  ignore=shutil.ignore_patterns(".pytest_cache", "__pycache__", ".hypothesis"))
  return dest


def environment(**extra) -> dict:
  """This process's environment without ``CI_VARIABLES`` and ``OWN``, then ``extra`` (a None
  value removes the variable)."""
  env = {k: v for k, v in os.environ.items() if k not in CI_VARIABLES + OWN}
  for key, value in extra.items():
    if value is None:
      env.pop(key, None)
    else:
      env[key] = value
  return env


def run_pytest(folder, *args, env=None, timeout: float = 600) -> Run:
  """``python -m pytest -q *args`` in ``folder``."""
  start = time.perf_counter()
  out = subprocess.run([sys.executable, "-m", "pytest", "-q", *args], cwd=folder,
                       env=environment() if env is None else env, capture_output=True, text=True,
                       timeout=timeout)
  return Run(out.returncode, time.perf_counter() - start, out.stdout + out.stderr)


def _row(name: str, run: Run) -> str:
  s = run.summary
  inner = f"{run.pytest_seconds:.2f} s" if run.pytest_seconds is not None else "?"
  result = "pass" if run.returncode == 0 else f"exit {run.returncode}"
  return (f"| {name} | {run.seconds:.2f} s | {inner} | {s.get('compilations', '?')} | "
          f"{s.get('cache_hits', '?')} | {result} |")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--repeats", type=int, default=1, help="sequences in fresh folders; best of each")
  p.add_argument("--workers", type=int, default=2, help="pytest-xdist workers of the -n runs")
  args = p.parse_args(argv)
  best: dict = {}
  order = ["cold", "warm", f"cold -n {args.workers}", f"warm -n {args.workers}"]
  with tempfile.TemporaryDirectory(prefix="bpref-ci-project-") as tmp:
    for repeat in range(args.repeats):
      serial = copy_project(pathlib.Path(tmp) / f"serial{repeat}")
      parallel = copy_project(pathlib.Path(tmp) / f"parallel{repeat}")
      runs = [run_pytest(serial), run_pytest(serial),
              run_pytest(parallel, "-n", str(args.workers)),
              run_pytest(parallel, "-n", str(args.workers))]
      for name, run in zip(order, runs):
        if run.returncode != 0:
          print(f"{name}: the suite failed (exit {run.returncode}):\n{run.output}", file=sys.stderr)
          return 1
        if name not in best or run.seconds < best[name].seconds:
          best[name] = run
  print(f"examples/ci_project, python -m pytest -q (best of {args.repeats}; "
        f"{os.cpu_count()} cores, python {sys.version.split()[0]})\n")
  print("| run | wall | pytest's time | XLA compilations | read from the cache | result |")
  print("|---|---:|---:|---:|---:|---|")
  for name in order:
    print(_row(name, best[name]))
  cold, warm = best["cold"], best["warm"]
  print(f"\ncold / warm: {cold.seconds / warm.seconds:.2f}x wall"
        + (f", {cold.pytest_seconds / warm.pytest_seconds:.2f}x pytest's time"
           if cold.pytest_seconds and warm.pytest_seconds else ""))
  n_cold, n_warm = best[order[2]], best[order[3]]
  print(f"cold / warm with -n {args.workers}: {n_cold.seconds / n_warm.seconds:.2f}x wall")
  return 0


if __name__ == "__main__":
  sys.exit(main())
