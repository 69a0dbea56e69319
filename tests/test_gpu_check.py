"""scripts/gpu_check.py (issue 17) in its quick mode on the CPU: every step reports a status.

The GPU run itself is ``bash scripts/gpu_check.sh`` on a machine with a GPU; here the helper's
steps run as the script runs them (a subprocess each, JAX_PLATFORMS=cpu), then ``record`` and
``summary``. On the CPU, Precision.DEFAULT is full float32, so the precision step must be within
the float32 model and must reject the planted 1e-3 bug.
"""

import fcntl
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HELPER = ROOT / "scripts" / "gpu_check.py"
STEPS = ("env", "precision", "oracle", "sharding", "matmul")


def _env(**extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  env.pop("XLA_FLAGS", None)
  env.update(extra)
  return env


def _record(out, name, rc, stdout, log=""):
  (out / f"{name}.stdout").write_text(stdout)
  (out / f"{name}.log").write_text(log)
  subprocess.run([sys.executable, str(HELPER), "record", name, "--rc", str(rc), "--seconds", "1",
                  "--limit", "9", "--stdout", str(out / f"{name}.stdout"), "--log",
                  str(out / f"{name}.log"), "--out", str(out)], check=True, cwd=ROOT)
  return json.loads((out / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """Each step as the shell script runs it; sharding with two host devices so that it runs.

  Run once per test session: under ``pytest -n`` the first worker to get here runs the steps
  in the session's shared temporary directory while the others wait on the lock, then read.
  """
  shared = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    shared = shared.parent  # this session's directory, the same for every worker
  out = shared / "gpu_out"
  with open(shared / "gpu_out.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (out / "summary.txt").exists():
      out.mkdir(exist_ok=True)
      for name in STEPS:
        extra = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"} if name == "sharding" else {}
        proc = subprocess.run([sys.executable, str(HELPER), name, "--quick"], capture_output=True,
                              text=True, env=_env(**extra), cwd=ROOT, timeout=600)
        _record(out, name, proc.returncode, proc.stdout, proc.stderr)
      summary = subprocess.run([sys.executable, str(HELPER), "summary", "--out", str(out)],
                               capture_output=True, text=True, check=True, cwd=ROOT)
      (out / "summary.txt").write_text(summary.stdout)
  return out, (out / "summary.txt").read_text()


def test_every_step_has_a_status(run):
  out, table = run
  steps = json.loads((out / "summary.json").read_text())["steps"]
  assert [s["step"] for s in steps] == list(STEPS)
  status = {s["step"]: s["status"] for s in steps}
  assert status == {"env": "ok", "precision": "ok", "oracle": "ok", "sharding": "ok",
                    "matmul": "skipped"}, table
  for name in STEPS:
    assert name in table
  assert "GPU only" in json.loads((out / "matmul.json").read_text())["headline"]


def test_precision_on_cpu_is_within_the_model_and_rejects_the_planted_bug(run):
  res = json.loads((run[0] / "precision.json").read_text())["result"]
  assert res["backend"] == "cpu" and res["networks"] == len(res["rows"]) >= 5
  for r in res["rows"]:
    for key in ("tol_default", "tol_highest", "err_default_vs_referee", "err_highest_vs_referee",
                "err_default_vs_highest", "err_planted_vs_referee", "tol_tf32_model"):
      assert math.isfinite(r[key]) and r[key] >= 0, (key, r)
    assert r["u_default"] == 2.0 ** -24  # no TF32 on the CPU: DEFAULT is full float32
    assert r["err_default_vs_highest"] == 0.0
    assert r["within_model"] and r["err_default_vs_referee"] <= r["tol_default"]
    assert r["planted_rejected"] and r["err_planted_vs_referee"] >= 0.9e-3
    assert r["tol_tf32_crude"] == pytest.approx(2.0 ** 14 * r["tol_default"])
    assert r["tol_default"] < r["tol_tf32_model"]  # (T') at TF32 is above float32's (T)
  assert res["within_model"] == res["planted_rejected"] == res["networks"]
  assert res["tf32_visible"] is False


def test_oracle_passes_jax_grad_and_skips_tf32_off_the_gpu(run):
  res = json.loads((run[0] / "oracle.json").read_text())["result"]
  runs = res["runs"]
  for name in ("float64/HIGHEST", "float32/HIGHEST"):
    assert runs[name]["verdict"] == "pass" and runs[name]["cases"] > 0
    assert runs[name]["platforms"] == ["cpu"]
  assert runs["float32/DEFAULT"]["verdict"] == "skipped" and runs["float32/DEFAULT"]["reason"]


def test_sharding_with_two_devices_matches_one(run):
  res = json.loads((run[0] / "sharding.json").read_text())["result"]
  assert res["devices"] == 2
  for r in res["rows"]:
    assert math.isfinite(r["err"]) and r["err"] <= r["tol"] and r["grad_devices"] == 2


def test_sharding_skips_on_one_device():
  proc = subprocess.run([sys.executable, str(HELPER), "sharding", "--quick"], capture_output=True,
                        text=True, env=_env(), cwd=ROOT, check=True, timeout=300)
  assert json.loads(proc.stdout) == {"status": "skipped", "headline": "skipped: 1 device", "devices": 1}


def test_record_keeps_timeouts_and_crashes(tmp_path):
  assert _record(tmp_path, "verify_float32", 124, "")["status"] == "timeout"
  crash = _record(tmp_path, "bench", 1, "", "Traceback\nRuntimeError: boom")
  assert crash["status"] == "error" and "boom" in crash["headline"]
  failed = _record(tmp_path, "verify_float64", 1, json.dumps({"passed": False, "table": []}))
  assert failed["status"] == "fail"


def test_matmul_peak_is_finite():
  sys.path.insert(0, str(HELPER.parent))
  try:
    import gpu_check
  finally:
    sys.path.remove(str(HELPER.parent))
  res = gpu_check.matmul_peak(64, repeats=2)
  assert res["gflops_highest"] > 0 and res["gflops_default"] > 0


def test_the_shell_script_parses():
  subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_check.sh")], check=True)
