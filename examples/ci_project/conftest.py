import jax

jax.config.update("jax_enable_x64", True)  # float64 arrays stay float64 in JAX (bpref refuses them otherwise)
# bpref's pytest plugin keeps the compilation cache in .pytest_cache/d/bpref-xla, shared by
# `pytest -n auto`'s workers; without it: from bpref import compilation; compilation.use_cache(default=True)
