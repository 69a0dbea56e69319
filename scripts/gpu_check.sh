#!/usr/bin/env bash
# Issue 17 in one call on a GPU machine, in under 8 minutes (GPU_CHECK_BUDGET=450 s by default,
# plus at most ~10 s of venv creation and kill grace):
# install, then bpref verify, bpref bench, the TF32 precision model against the referee, the
# oracle on jax.grad, sharding, and a large matmul's GFLOP/s.
#
#   bash scripts/gpu_check.sh [--no-install] [--quick]
#
# OUT (default ./gpu_out) receives one JSON per step (status, seconds, limit, a headline and the
# command's own JSON) and summary.json; the summary table is printed at the end. Every step runs
# under `timeout`; a failed or killed step is recorded and the next one runs.
# VENV (default .venv) is created with --system-site-packages (a JAX already on the machine stays
# visible); --no-install uses it, or python3, as it is. With JAX_PLATFORMS=cpu everything runs on
# the CPU and the GPU-only parts are skipped with a reason. --quick: few networks (the CPU test).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-./gpu_out} VENV=${VENV:-.venv} BUDGET=${GPU_CHECK_BUDGET:-450}
INSTALL=1 QUICK=
for a in "$@"; do
  case $a in
    --no-install) INSTALL=0 ;;
    --quick) QUICK=--quick ;;
    *) echo "usage: bash scripts/gpu_check.sh [--no-install] [--quick]" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # bpref importable even when pip cannot install it
START=$SECONDS

# cap C R: C seconds, or fewer so that R seconds of the budget are left for the steps after
cap() { local c=$1 l=$(( BUDGET - (SECONDS - START) - $2 )); (( l < c )) && c=$l; (( c < 10 )) && c=10; echo $c; }

# step NAME LIMIT CMD...: CMD under timeout; its stdout (JSON), exit code and time -> $OUT/NAME.json
step() {
  local name=$1 limit=$2 t0=$SECONDS rc; shift 2
  echo "== $name (limit ${limit}s): $*" >&2
  timeout -k 10 "$limit" "$@" > "$OUT/$name.stdout" 2> "$OUT/$name.log"; rc=$?
  "$PY" scripts/gpu_check.py record "$name" --rc $rc --seconds $((SECONDS - t0)) --limit "$limit" \
      --stdout "$OUT/$name.stdout" --log "$OUT/$name.log" --out "$OUT"
  rm -f "$OUT/$name.stdout"
}

# ---- 0. the GPU, as the driver sees it
WANT_GPU=0
if timeout 30 nvidia-smi > "$OUT/nvidia_smi.txt" 2>&1; then
  timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm \
      --format=csv >> "$OUT/nvidia_smi.txt" 2>&1
  [ "${JAX_PLATFORMS:-}" = cpu ] || WANT_GPU=1
  grep -E "Driver Version|NVIDIA H|NVIDIA A|MiB" "$OUT/nvidia_smi.txt" | head -4 >&2
else
  echo "nvidia-smi: not available" >> "$OUT/nvidia_smi.txt"
fi

# ---- 1. a venv with bpref and a JAX that sees the GPU
[ $INSTALL = 1 ] && [ ! -x "$VENV/bin/python" ] && python3 -m venv --system-site-packages "$VENV"
PY=$VENV/bin/python; [ -x "$PY" ] || PY=$(command -v python3)
pip_install() {
  timeout -k 5 "$(cap 150 300)" "$PY" -m pip install --disable-pip-version-check --retries 1 \
      --timeout 20 -e '.[test]' "$@" >> "$OUT/install.log" 2>&1
}
gpu_jax() { "$PY" -c "import jax; assert jax.default_backend() == 'gpu'" > /dev/null 2>&1; }
install() {  # prints one line: what was installed, or why not
  if ! timeout 60 "$PY" -m pip index versions jax --retries 0 --timeout 15 >> "$OUT/install.log" 2>&1; then
    echo "NO PACKAGE REGISTRY REACHABLE: nothing installed, continuing with the JAX already present"
    return 1
  fi
  if [ $WANT_GPU = 0 ]; then
    pip_install && { echo "installed .[test] (no GPU wanted)"; return 0; }
    echo "pip install -e .[test] failed (see install.log)"; return 1
  fi
  pip_install "jax[cuda12]" && gpu_jax && echo "installed .[test] jax[cuda12]" && return 0
  "$PY" -m pip uninstall -y jax-cuda12-plugin jax-cuda12-pjrt >> "$OUT/install.log" 2>&1
  pip_install "jax[cuda13]" && gpu_jax && echo "installed .[test] jax[cuda13] (jax[cuda12] failed)" && return 0
  echo "neither jax[cuda12] nor jax[cuda13] gave JAX a GPU backend (see install.log)"; return 1
}
t0=$SECONDS
if [ $INSTALL = 1 ]; then msg=$(install); rc=$?; status=$([ $rc = 0 ] && echo ok || echo fail)
else msg="skipped: --no-install, using $PY as it is"; rc=0 status=skipped; fi
echo "install: $msg" >&2
printf '{"status": "%s", "headline": "%s"}\n' "$status" "$msg" > "$OUT/install.stdout"
"$PY" scripts/gpu_check.py record install --rc $rc --seconds $((SECONDS - t0)) --limit 300 \
    --stdout "$OUT/install.stdout" --log "$OUT/install.log" --out "$OUT"; rm -f "$OUT/install.stdout"

if ! "$PY" -c "import jax" > /dev/null 2>&1 && [ "$PY" != "$(command -v python3)" ]; then
  PY=$(command -v python3)  # a venv made from a venv's python sees the base's packages, not that venv's
  echo "no JAX in $VENV: using $PY" >&2
fi

step env 60 "$PY" scripts/gpu_check.py env --nvidia-smi "$OUT/nvidia_smi.txt"
DEV=$("$PY" -c "import jax; print(jax.default_backend())" 2>/dev/null || echo cpu)

# ---- 2. side by side (no timings among them): verify per dtype, precision, oracle, sharding
if [ -n "$QUICK" ]; then VERIFY="--cases 3 --witness-cases 1"
  BENCH="--cells tiny --activations tanh --repeats 2 --arch-cases 20 --arch-budget 1"
else VERIFY="--quick"
  BENCH="--quick --cells tiny,small,medium,large,deep --repeats 3 --arch-cases 300 --arch-budget 5"; fi
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # several processes share the GPU here
for d in float32 float64; do
  step verify_$d "$(cap 240 120)" "$PY" -m bpref verify --device "$DEV" $VERIFY --dtype $d --json --no-progress &
done
( step precision "$(cap 150 120)" "$PY" scripts/gpu_check.py precision $QUICK
  step oracle "$(cap 150 120)" "$PY" scripts/gpu_check.py oracle $QUICK
  step sharding "$(cap 60 120)" "$PY" scripts/gpu_check.py sharding $QUICK ) &
wait
unset XLA_PYTHON_CLIENT_PREALLOCATE

# ---- 3. alone on the machine: the timings
step bench "$(cap 200 25)" "$PY" -m bpref bench $BENCH --json
step matmul "$(cap 60 0)" "$PY" scripts/gpu_check.py matmul $QUICK

"$PY" scripts/gpu_check.py summary --out "$OUT"
echo "total $((SECONDS - START)) s of a $BUDGET s budget; JSON under $OUT"
