"""bpref: a reference implementation of handwritten layerwise backpropagation.

Data flow: params -> forward tape (z, a) -> backward (delta, lambda) -> gradients.
"""

from bpref import activations as activations
from bpref import losses as losses
from bpref.backprop import backward as backward
from bpref.backprop import deltas as deltas
from bpref.backprop import grad as grad
from bpref.backprop import input_grad as input_grad
from bpref.backprop import lambdas as lambdas
from bpref.backprop import loss_value as loss_value
from bpref.backprop import output_delta as output_delta
from bpref.backprop import param_grads as param_grads
from bpref.backprop import per_example_grads as per_example_grads
from bpref.backprop import value_and_grad as value_and_grad
from bpref.network import DEFAULT_PRECISION as DEFAULT_PRECISION
from bpref.network import forward as forward
from bpref.network import from_arrays as from_arrays
from bpref.network import init as init
from bpref.network import predict as predict
from bpref.scale.sharding import shard_batch as shard_batch
from bpref.structures import Architecture as Architecture
from bpref.structures import Deltas as Deltas
from bpref.structures import Grads as Grads
from bpref.structures import Lambdas as Lambdas
from bpref.structures import Layer as Layer
from bpref.structures import Params as Params
from bpref.structures import Tape as Tape

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
  # ``bpref.fast`` and ``from bpref import fast`` of the flat layout: the module, with a warning
  if name in _MOVED:
    import importlib
    import warnings

    warnings.warn(f"bpref.{name} is now {_MOVED[name]}; import it from there",
                  DeprecationWarning, stacklevel=2)
    return importlib.import_module(_MOVED[name])
  raise AttributeError(f"module 'bpref' has no attribute {name!r}")
