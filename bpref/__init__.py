"""bpref: a reference implementation of handwritten layerwise backpropagation.

Data flow: params -> forward tape (z, a) -> backward (delta, lambda) -> gradients.
"""

_LAZY = {
    "activations": ("bpref.activations", None), "losses": ("bpref.losses", None),
    **{name: ("bpref.backprop", name) for name in (
        "backward", "deltas", "grad", "input_grad", "lambdas", "loss_value", "output_delta",
        "param_grads", "per_example_grads", "value_and_grad")},
    **{name: ("bpref.network", name) for name in (
        "DEFAULT_PRECISION", "forward", "from_arrays", "init", "predict")},
    "shard_batch": ("bpref.scale.sharding", "shard_batch"),
    **{name: ("bpref.structures", name) for name in (
        "Architecture", "Deltas", "Grads", "Lambdas", "Layer", "Params", "Tape")},
}
"""The public names, each imported from its module when first used (``bpref.grad`` imports JAX
and the core; a process that only runs a candidate for the oracle imports neither)."""

__version__ = "0.1.0"

__all__ = [
    "Architecture", "DEFAULT_PRECISION", "Deltas", "Grads", "Lambdas", "Layer", "Params", "Tape",
    "activations", "backward", "deltas", "forward", "from_arrays", "grad", "init", "input_grad",
    "lambdas", "loss_value", "losses", "output_delta", "param_grads", "per_example_grads",
    "predict", "shard_batch", "value_and_grad",
]

_MOVED = {
    "fast": "bpref.scale.fast", "sharding": "bpref.scale.sharding", "verify": "bpref.tools.verify",
    "bench": "bpref.tools.bench", "train": "bpref.tools.train", "vectors": "bpref.oracle.vectors",
    "finite_diff": "bpref.witnesses.finite_diff",
    "referee": "bpref.witnesses.referee", "reference": "bpref.witnesses.autodiff",
    "precision": "bpref.tolerance",
}
"""Modules of bpref 0.1's flat layout and where they are now."""


def __getattr__(name: str):
  import importlib

  if name in _LAZY:
    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    value = value if attr is None else getattr(value, attr)
    globals()[name] = value  # found directly from now on
    return value
  # ``bpref.fast`` and ``from bpref import fast`` of the flat layout: the module, with a warning
  if name in _MOVED:
    import warnings

    warnings.warn(f"bpref.{name} is now {_MOVED[name]}; import it from there",
                  DeprecationWarning, stacklevel=2)
    return importlib.import_module(_MOVED[name])
  raise AttributeError(f"module 'bpref' has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(__all__))
