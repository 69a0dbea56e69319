"""Strict test environment: x64 on, rank and dtype promotion strict, warnings are errors
(pyproject.toml), hypothesis profiles by BPREF_PROFILE."""

import importlib.util
import os

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

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
