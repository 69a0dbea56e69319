"""Strict test environment: x64 on, rank and dtype promotion strict, warnings are errors
(pyproject.toml), hypothesis profiles by BPREF_PROFILE.

The suite runs ``bpref check`` and ``bpref verify`` in many fresh interpreters, each compiling
the same handful of programs, and pytest-xdist's workers compile many of the same programs too.
They all share one persistent compilation cache (BPREF_CACHE_DIR, docs/performance.md), a
directory made for this run and removed after it, unless the caller names one. A hit returns
the executable that the same program compiled to; compilations are counted with the hits, so
the budgets of tests/test_compilation.py hold either way.
"""

import atexit
import importlib.util
import os
import shutil
import tempfile

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

if "BPREF_CACHE_DIR" not in os.environ and "PYTEST_XDIST_WORKER" not in os.environ:
  os.environ["BPREF_CACHE_DIR"] = tempfile.mkdtemp(prefix="bpref-test-xla-")  # the workers inherit it
  atexit.register(shutil.rmtree, os.environ["BPREF_CACHE_DIR"], ignore_errors=True)
if "BPREF_CACHE_DIR" in os.environ:
  from bpref import compilation  # noqa: E402

  compilation.use_cache()  # the workers share it with each other and with the fresh interpreters

from hypothesis import HealthCheck, Phase, settings  # noqa: E402

settings.register_profile(
    "ci", derandomize=True, max_examples=30, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "dev", max_examples=15, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(  # scripts/mutate.py: the dev draws, a failure reported unshrunk
    "mutate", max_examples=15, deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "thorough", max_examples=500, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("BPREF_PROFILE", "ci" if os.environ.get("CI") else "dev"))

# The bridges' modules import their framework at the top: without the `bridges` extra the
# doctest collection leaves them out (their tests skip on their own).
collect_ignore = [f"bpref/bridges/{name}.py" for name, module in
                  (("torch", "torch"), ("equinox", "equinox"), ("flax", "flax"))
                  if importlib.util.find_spec(module) is None]
