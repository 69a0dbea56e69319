"""``bpref train``: train an MLP with bpref's handwritten gradients and an optax optimizer.

The same network is trained twice from the same initial parameters, on the
same sequence of minibatches, with the same optimizer:

* once with ``bpref.value_and_grad`` (the handwritten delta recursion), and
* once with ``bpref.witnesses.autodiff.value_and_grad`` (``jax.grad``, the witness).

Both loss curves are returned step by step. The gradients agree to rounding
(a normwise relative error of order u per step, see ``bpref.tolerance``), so
the curves agree to rounding too, amplified only by how training itself
propagates a perturbation of the parameters. ``CURVE_BOUND`` states the
accepted gap: ``steps * gradient_tolerance(dtype)`` relative to the loss,
that is, each step may add at most one gradient tolerance of relative
difference and the differences are not allowed to compound.

The data set is scikit-learn's digits (1797 images of 8 x 8 pixels, 10
classes, shipped inside scikit-learn) when scikit-learn is installed, else a
synthetic one: Gaussian inputs labelled by a fixed random teacher network.

Shapes: x (N, n_0), t (N, K) one-hot rows; a minibatch is (B, n_0), (B, K).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bpref import backprop as _backprop
from bpref import network as _network
from bpref import tolerance as _tolerance
from bpref.validation import ranged
from bpref.witnesses import autodiff as _autodiff

DATASETS = ("auto", "digits", "synthetic")
OPTIMIZERS = ("adam", "sgd", "momentum")


class Dataset(NamedTuple):
  """A classification data set split into train and test rows.

  Attributes:
    name: ``"digits"`` or ``"synthetic"``.
    x_train, t_train: inputs (N, n_0) and one-hot targets (N, K).
    x_test, t_test: held-out rows with the same columns.
  """
  name: str
  x_train: np.ndarray
  t_train: np.ndarray
  x_test: np.ndarray
  t_test: np.ndarray


class TrainResult(NamedTuple):
  """Two training runs that differ only in how the gradient was computed.

  Attributes:
    config: the settings of the run (dataset, sizes, activations, optimizer, ...).
    bpref_loss: minibatch loss before each step with bpref's gradients, shape (steps,).
    autodiff_loss: the same with ``jax.grad``'s gradients, shape (steps,).
    bpref_accuracy, autodiff_accuracy: test-set accuracy of the final parameters.
    max_abs_diff: max_k |bpref_loss[k] - autodiff_loss[k]|.
    max_rel_diff: max_k of that difference over |autodiff_loss[k]|.
    tolerance: the accepted ``max_rel_diff`` (``curve_tolerance``).
  """
  config: dict
  bpref_loss: np.ndarray
  autodiff_loss: np.ndarray
  bpref_accuracy: float
  autodiff_accuracy: float
  max_abs_diff: float
  max_rel_diff: float
  tolerance: float

  @property
  def matched(self) -> bool:
    return bool(self.max_rel_diff <= self.tolerance)

  def to_json(self) -> dict:
    return {
        "config": self.config,
        "bpref_loss": [float(v) for v in self.bpref_loss],
        "autodiff_loss": [float(v) for v in self.autodiff_loss],
        "bpref_accuracy": self.bpref_accuracy,
        "autodiff_accuracy": self.autodiff_accuracy,
        "max_abs_diff": self.max_abs_diff,
        "max_rel_diff": self.max_rel_diff,
        "tolerance": self.tolerance,
        "matched": self.matched,
    }


def curve_tolerance(steps: int, dtype) -> float:
  """Accepted max relative gap of the loss curves: steps * gradient_tolerance(dtype)."""
  return steps * _tolerance.gradient_tolerance(dtype)


# ---------------------------------------------------------------- data

def _one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
  return np.eye(classes)[labels]


def _split(name, x, labels, classes, rng, test_fraction=0.2) -> Dataset:
  order = rng.permutation(x.shape[0])
  n_test = int(round(test_fraction * x.shape[0]))
  test, train = order[:n_test], order[n_test:]
  t = _one_hot(labels, classes)
  return Dataset(name, x[train], t[train], x[test], t[test])


def digits(seed: int = 0) -> Dataset:
  """scikit-learn's digits: x = pixels / 16 in [0, 1], shape (N, 64); 10 classes."""
  try:
    from sklearn.datasets import load_digits
  except ImportError:
    raise ImportError("the digits data set needs scikit-learn: pip install 'bpref[train]', "
                      "or use --dataset synthetic") from None
  data = load_digits()
  x = data.data.astype(np.float64) / 16.0
  return _split("digits", x, data.target.astype(np.int64), 10, np.random.default_rng(seed))


def synthetic(seed: int = 0, n: int = 1200, features: int = 16, classes: int = 4) -> Dataset:
  """Gaussian x ~ N(0, I), labelled by argmax of a fixed random tanh teacher network."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, features))
  W1 = rng.normal(size=(16, features)) / np.sqrt(features)
  W2 = rng.normal(size=(classes, 16)) / 4.0
  labels = np.argmax(np.tanh(x @ W1.T) @ W2.T, axis=1)
  return _split("synthetic", x, labels, classes, rng)


def load(name: str = "auto", seed: int = 0) -> Dataset:
  """The data set ``name``; ``"auto"`` is digits when scikit-learn is installed, else synthetic."""
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
  if name == "auto":
    name = "digits" if importlib.util.find_spec("sklearn") is not None else "synthetic"
  return digits(seed) if name == "digits" else synthetic(seed)


# ---------------------------------------------------------------- training

def _optimizer(name: str, learning_rate: float):
  try:
    import optax
  except ImportError:
    raise ImportError("bpref train needs optax: pip install 'bpref[train]'") from None
  if name == "adam":
    return optax.adam(learning_rate)
  if name == "sgd":
    return optax.sgd(learning_rate)
  if name == "momentum":
    return optax.sgd(learning_rate, momentum=0.9)
  raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")


def _batches(n_rows: int, steps: int, batch: int, seed: int) -> np.ndarray:
  """Row indices of every minibatch, shape (steps, batch): epochs of fresh permutations."""
  rng = np.random.default_rng(seed + 1)
  per_epoch = n_rows // batch
  epochs = -(-steps // per_epoch)
  rows = [rng.permutation(n_rows)[:per_epoch * batch].reshape(per_epoch, batch)
          for _ in range(epochs)]
  return np.concatenate(rows)[:steps]


def fit(value_and_grad, params, x, t, batch_rows, optimizer, loss="softmax_cross_entropy",
        reduction="mean"):
  """Run the optimizer over every minibatch; return (final params, loss before each step).

  Args:
    value_and_grad: ``bpref.value_and_grad`` or ``bpref.witnesses.autodiff.value_and_grad``.
    params: initial network.
    x, t: training inputs (N, n_0) and targets (N, K).
    batch_rows: integer rows of each minibatch, shape (steps, B).
    optimizer: an ``optax.GradientTransformation``.

  Step k: (C_k, g_k) = value_and_grad(theta_k, x[rows_k], t[rows_k]);
  theta_{k+1} = theta_k + update(g_k). Returns theta_steps and (C_0, ..., C_{steps-1}).
  """
  import optax

  @jax.jit
  def run(theta, x, t, batch_rows):
    def step(carry, rows):
      theta, state = carry
      value, g = value_and_grad(theta, x[rows], t[rows], loss, reduction)
      with jax.numpy_dtype_promotion("standard"):  # optax mixes its int32 step count with floats
        updates, state = optimizer.update(g, state, theta)
        return (optax.apply_updates(theta, updates), state), value

    (theta, _), values = jax.lax.scan(step, (theta, optimizer.init(theta)), batch_rows)
    return theta, values

  return run(params, jnp.asarray(x), jnp.asarray(t), jnp.asarray(batch_rows))


def accuracy(params, x, t) -> float:
  """Fraction of rows whose largest output is the target class."""
  y = np.asarray(_network.predict(params, x))
  return float(np.mean(np.argmax(y, axis=1) == np.argmax(np.asarray(t), axis=1)))


def train(*, dataset: str = "auto", hidden=(32,), activation: str = "tanh",
          optimizer: str = "adam", learning_rate: float = 3e-3, steps: int = 300,
          batch: int = 64, seed: int = 0, dtype: str = "float64") -> TrainResult:
  """Train the same MLP with bpref's gradients and with ``jax.grad``'s; compare the curves.

  The network is n_0 -> hidden... -> K with ``activation`` in the hidden layers and
  identity logits, trained on the softmax cross-entropy averaged over the minibatch.

  >>> result = train(dataset="synthetic", steps=20)  # doctest: +SKIP
  >>> result.matched  # doctest: +SKIP
  True
  """
  if dtype == "float64" and not jax.config.jax_enable_x64:
    raise ValueError("float64 training needs x64: jax.config.update('jax_enable_x64', True), "
                     "or pass dtype='float32'")
  if steps < 1 or batch < 1:
    raise ValueError(f"steps and batch must be >= 1; got steps={steps}, batch={batch}")
  data = load(dataset, seed)
  if batch > data.x_train.shape[0]:
    raise ValueError(f"batch {batch} exceeds the {data.x_train.shape[0]} training rows of {data.name}")
  np_dtype = np.dtype(dtype)
  x, t = data.x_train.astype(np_dtype), data.t_train.astype(np_dtype)
  sizes = (x.shape[1], *hidden, t.shape[1])
  activations = (activation,) * len(hidden) + ("identity",)
  params = _network.init(jax.random.key(seed), sizes, activations, dtype=np_dtype)
  rows = _batches(x.shape[0], steps, batch, seed)
  opt = _optimizer(optimizer, learning_rate)
  ours, ours_curve = fit(_backprop.value_and_grad, params, x, t, rows, opt)
  theirs, theirs_curve = fit(_autodiff.value_and_grad, params, x, t, rows, opt)
  ours_curve = np.asarray(ours_curve, np.float64)
  theirs_curve = np.asarray(theirs_curve, np.float64)
  gap = np.abs(ours_curve - theirs_curve)
  x_test, t_test = data.x_test.astype(np_dtype), data.t_test.astype(np_dtype)
  config = {"dataset": data.name, "sizes": list(sizes), "activations": list(activations),
            "loss": "softmax_cross_entropy", "reduction": "mean", "optimizer": optimizer,
            "learning_rate": learning_rate, "steps": steps, "batch": batch, "seed": seed,
            "dtype": dtype, "train_rows": int(x.shape[0]), "test_rows": int(x_test.shape[0])}
  return TrainResult(
      config=config, bpref_loss=ours_curve, autodiff_loss=theirs_curve,
      bpref_accuracy=accuracy(ours, x_test, t_test),
      autodiff_accuracy=accuracy(theirs, x_test, t_test),
      max_abs_diff=float(gap.max()),
      max_rel_diff=float(np.max(gap / np.abs(theirs_curve))),
      tolerance=curve_tolerance(steps, dtype))


# ---------------------------------------------------------------- output

def plot(result: TrainResult, path: str) -> str:
  """Write both loss curves (top) and their gap on a log scale (bottom) to a PNG at ``path``."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    raise ImportError("--plot needs matplotlib: pip install 'bpref[plot]'") from None
  steps = np.arange(len(result.bpref_loss))
  fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True,
                                    gridspec_kw={"height_ratios": (2, 1)})
  top.plot(steps, result.autodiff_loss, color="0.6", linewidth=3, label="jax.grad (witness)")
  top.plot(steps, result.bpref_loss, color="C0", linewidth=1, label="bpref (handwritten)")
  top.set_ylabel("minibatch loss")
  top.set_yscale("log")
  c = result.config
  top.set_title(f"{c['dataset']} {c['sizes']} {c['optimizer']} lr={c['learning_rate']} {c['dtype']}")
  top.legend()
  gap = np.abs(result.bpref_loss - result.autodiff_loss) / np.abs(result.autodiff_loss)
  floor = _tolerance.unit_roundoff(c["dtype"]) / 16
  bottom.semilogy(steps, np.maximum(gap, floor), color="C3", linewidth=1,
                  label="|bpref - jax.grad| / loss (0 drawn at u/16)")
  bottom.axhline(result.tolerance, color="k", linestyle="--", linewidth=1, label="tolerance")
  bottom.set_xlabel("step")
  bottom.set_ylabel("relative gap")
  bottom.legend(loc="center right", fontsize="small")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def format_result(result: TrainResult) -> str:
  c = result.config
  lines = [
      f"dataset {c['dataset']} ({c['train_rows']} train / {c['test_rows']} test rows), "
      f"MLP {c['sizes']} {c['activations'][0]}, {c['optimizer']} lr={c['learning_rate']}, "
      f"{c['steps']} steps of B={c['batch']}, {c['dtype']}, seed {c['seed']}",
      f"{'step':>6} {'bpref loss':>14} {'jax.grad loss':>14}",
  ]
  shown = sorted(set(np.linspace(0, c["steps"] - 1, 6).round().astype(int).tolist()))
  for k in shown:
    lines.append(f"{k:6d} {result.bpref_loss[k]:14.8f} {result.autodiff_loss[k]:14.8f}")
  lines += [
      f"test accuracy: bpref {result.bpref_accuracy:.4f}, jax.grad {result.autodiff_accuracy:.4f}",
      f"largest gap between the curves: {result.max_abs_diff:.3e} absolute, "
      f"{result.max_rel_diff:.3e} relative (tolerance {result.tolerance:.1e})",
      "MATCH: the curves agree step by step" if result.matched
      else "MISMATCH: the curves differ by more than the tolerance",
  ]
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="bpref train",
      description="Train an MLP with bpref's handwritten gradients and an optax optimizer, and "
                  "again with jax.grad from the same seed; compare the loss curves step by step. "
                  "Exit code 0 when the curves agree within the tolerance, 1 otherwise.")
  parser.add_argument("--dataset", choices=DATASETS, default="auto",
                      help="digits needs scikit-learn; auto picks digits when it is installed")
  parser.add_argument("--hidden", type=int, nargs="+", default=[32], help="hidden widths (default 32)")
  parser.add_argument("--activation", default="tanh", help="hidden activation (default tanh)")
  parser.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
  parser.add_argument("--lr", type=ranged(0.0, 1e6, float), default=3e-3,
                      help="learning rate, above 0 and at most 1e6 (default 3e-3)")
  parser.add_argument("--steps", type=ranged(1, 1_000_000), default=300)
  parser.add_argument("--batch", type=ranged(1, 1_000_000), default=64)
  parser.add_argument("--seed", type=ranged(0, 2**32 - 1), default=0, help="0 to 2**32 - 1")
  parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
  parser.add_argument("--plot", metavar="PNG", help="write both loss curves to this PNG file")
  parser.add_argument("--json", action="store_true", help="print the result as JSON")
  args = parser.parse_args(argv)
  if args.steps < 1 or args.batch < 1 or any(h < 1 for h in args.hidden):
    parser.error("--steps, --batch and every --hidden width must be >= 1")
  if args.lr <= 0:
    parser.error("--lr must be > 0")
  jax.config.update("jax_enable_x64", True)
  start = time.perf_counter()
  try:
    result = train(dataset=args.dataset, hidden=tuple(args.hidden), activation=args.activation,
                   optimizer=args.optimizer, learning_rate=args.lr, steps=args.steps,
                   batch=args.batch, seed=args.seed, dtype=args.dtype)
    if args.plot:
      plot(result, args.plot)
  except (ValueError, TypeError, ImportError) as err:
    print(f"bpref train: {err}", file=sys.stderr)
    return 2
  seconds = round(time.perf_counter() - start, 2)
  if args.json:
    print(json.dumps({**result.to_json(), "seconds": seconds, "plot": args.plot}, indent=2))
  else:
    print(format_result(result))
    print(f"{seconds} s on {jax.default_backend()}" + (f"; curves written to {args.plot}" if args.plot else ""))
  return 0 if result.matched else 1
