"""The backward pass: the delta and lambda recursions and the gradients, by hand.

No JAX autodiff is used here. With rows as examples and the tape of
``bpref.network.forward``, the corrected equations (see proofs/errata.md) are:

* (34) delta_L = dC/dz_L = (dC/dy) diag f'_L(z_L)        rows: G * f'_L(Z_L)
* (37) delta_{l-1} = (delta_l W_l) diag f'_{l-1}(z_{l-1})  rows: (D_l W_l) * f'_{l-1}(Z_{l-1})
* (39) dC/dW_l = delta_l^T a_{l-1}^T  (delta a row, a a column: an outer product, (n_l, n_{l-1}))
                                                          rows: D_l^T A_{l-1}
*      dC/db_l = delta_l                                     rows: sum_b D_l
*      dC/dx = delta_1 W_1                                   rows: D_1 W_1
* (27) lambda_L = dy/dz_L = diag f'_L(z_L)
* (30) lambda_{l-1} = lambda_l W_l diag f'_{l-1}(z_{l-1})

For a softmax output layer diag f'_L is replaced by the Jacobian diag(a_L) - a_L a_L^T,
applied as a vector-Jacobian product.

The stages are public, on a batch x of shape (B, n_0) (rows are examples):

  tape = bpref.forward(params, x)                            # z_l, a_l: (7), (8)
  C, delta_L = output_delta(params, tape, t, loss, reduction)  # (13), (14), (34)
  deltas = backward(params, tape, delta_L)                   # (37)
  grads = param_grads(params, tape, deltas)                  # (39), dC/db_l = delta_l

and ``value_and_grad`` is their composition. One layer's steps are written once, here and in
``bpref.network``: ``layer_forward`` (7)-(8), ``pull_back`` (the delta_l W_l of (37)) and
``layer_grads`` (39); ``bpref.scale.fast``'s padded buckets call the same three. Each public stage checks that it has the tape of a
batch and arguments that fit it (``bpref.validation``); the compositions check their own arguments
once and call the stages' unchecked bodies.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bpref import activations as _activations
from bpref import losses as _losses
from bpref.network import DEFAULT_PRECISION, forward
from bpref.structures import Deltas, Lambdas, Layer, Tape, unbatched
from bpref.validation import check_delta_L, check_deltas, check_problem, check_tape, check_x

Array = jax.Array


def _reduced(loss: _losses.Loss, y: Array, t: Array, reduction: str) -> tuple[Array, Array]:
  """(C, dC/dy) of ``loss`` reduced over the batch, y and t of shape (B, K)."""
  value = _losses.reduce(loss.value(y, t), reduction)
  scale = jnp.asarray(_losses.reduce_scale(y.shape[0], reduction), y.dtype)
  return value, loss.dy(y, t) * scale  # (14) and its batch reduction


def output_delta(params, tape: Tape, t, loss, reduction) -> tuple[Array, Array]:
  """(C, delta_L) for the reduced loss: delta_L = dC/dz_L of shape (B, n_L), t of shape (B, n_L).

  cross_entropy after softmax and binary_cross_entropy after sigmoid are the logit losses of
  z_L, so C and delta_L come from z_L directly: softmax(z_L) sum_k t_k - t and sigma(z_L) - t.
  The two-step route divides by y_L, which underflows to 0 or rounds to 1 once the output
  saturates.
  """
  check_tape(params, tape)
  check_problem(params, tape.a[0], t, loss, reduction)
  return _output_delta(params, tape, t, loss, reduction)


def _output_delta(params, tape: Tape, t, loss, reduction) -> tuple[Array, Array]:
  loss_obj = _losses.get(loss)
  if loss_obj.logits is not None:
    return _reduced(_losses.get(loss_obj.logits), tape.z[-1], t, reduction)  # (34), corrected, with f_L and C fused
  value, g = _reduced(loss_obj, tape.a[-1], t, reduction)
  return value, _activations.vjp(params[-1].activation, tape.z[-1], tape.a[-1], g)  # (34), corrected


def backward(params, tape: Tape, delta: Array, precision=DEFAULT_PRECISION) -> Deltas:
  """(delta_1, ..., delta_L) from delta_L of shape (B, n_L), each delta_l of shape (B, n_l).

  delta_L may carry axes between the batch and the units, (B, ..., n_L): each row is pulled back
  on its own. ``lambdas`` pulls back the rows of lambda_L so, since (30) is (37) row by row.
  """
  check_delta_L(params, tape, delta)
  return _backward(params, tape, delta, precision)


def _backward(params, tape: Tape, delta: Array, precision) -> Deltas:
  out = [delta]
  for l in range(len(params) - 1, 0, -1):  # l = L-1, ..., 1
    back = pull_back(delta, params[l].W, precision=precision)  # delta_{l+1} W_{l+1}
    df = _activations.derivative(params[l - 1].activation, tape.z[l - 1], tape.a[l])  # (24)
    delta = back * jnp.expand_dims(df, range(1, back.ndim - 1))  # (37), corrected; (30) on rows of lambda
    out.append(delta)
  return tuple(reversed(out))


def pull_back(delta: Array, W: Array, *, precision=DEFAULT_PRECISION) -> Array:
  """delta_l W_l, the cotangent on a_{l-1}: the first half of one backward step (37).

  delta may be (B, n_l) or (B, ..., n_l) (rows of lambda_l, (30)); the result has n_{l-1} last.
  (37) then multiplies it by f'_{l-1}(z_{l-1}); at l = 1 it is dC/dx (26).
  """
  return jnp.matmul(delta, W, precision=precision)  # delta_l W_l


def layer_grads(delta: Array, a_prev: Array, bias: bool = True, *,
                precision=DEFAULT_PRECISION) -> tuple:
  """(dC/dW_l, dC/db_l) from delta_l (B, n_l) and a_{l-1} (B, n_{l-1}): one layer's (39).

  dC/db_l is None when ``bias`` is False.
  """
  dW = jnp.matmul(delta.T, a_prev, precision=precision)  # (39), corrected: rows D_l^T A_{l-1}
  db = jnp.sum(delta, axis=0) if bias else None  # dC/db_l = delta_l
  return dW, db


def param_grads(params, tape: Tape, deltas: Deltas, precision=DEFAULT_PRECISION) -> tuple:
  """dC/dparams from the tape and the deltas: a tree with the structure of ``params``."""
  check_deltas(params, tape, deltas)
  return _param_grads(params, tape, deltas, precision)


def _param_grads(params, tape: Tape, deltas: Deltas, precision) -> tuple:
  grads = []
  for layer, delta, a_prev in zip(params, deltas, tape.a[:-1]):
    dW, db = layer_grads(delta, a_prev, layer.b is not None, precision=precision)  # (39)
    grads.append(Layer(dW, db, layer.activation))
  return tuple(grads)


def _prepare(params, x, t, loss, reduction, precision):
  """Validate, run the forward pass and start the backward one: (tape, C, delta_L, single)."""
  x2, t2, single = check_problem(params, x, t, loss, reduction)
  tape = forward(params, x2, precision=precision)
  value, delta_L = _output_delta(params, tape, t2, loss, reduction)
  return tape, value, delta_L, single


def value_and_grad(params, x, t, loss: str = "squared_error", reduction: str = "mean", *,
                   precision=DEFAULT_PRECISION):
  """The loss C and its gradient with respect to every W_l and b_l.

  Args:
    params: the network (a tuple of ``Layer``).
    x: inputs, shape (B, n_0) or (n_0,).
    t: targets, shape (B, n_L) or (n_L,).
    loss: a name from ``bpref.losses.LOSSES``.
    reduction: ``"mean"`` (C = (1/B) sum_b C_b) or ``"sum"``.
    precision: matmul precision; ``jax.lax.Precision.HIGHEST`` by default.

  Returns:
    (C, grads): a scalar and a tree with exactly the structure of ``params``.

  >>> import jax, jax.numpy as jnp, bpref
  >>> params = bpref.init(jax.random.key(0), (2, 3, 1), "tanh")
  >>> C, grads = bpref.value_and_grad(params, jnp.ones((4, 2)), jnp.zeros((4, 1)))
  >>> grads[0].W.shape
  (3, 2)
  """
  tape, value, delta_L, _ = _prepare(params, x, t, loss, reduction, precision)
  deltas = _backward(params, tape, delta_L, precision)
  return value, _param_grads(params, tape, deltas, precision)


def loss_value(params, x, t, loss: str = "squared_error", reduction: str = "mean", *,
               precision=DEFAULT_PRECISION) -> Array:
  """The reduced loss C of the network's prediction: the first half of ``value_and_grad``."""
  x2, t2, _ = check_problem(params, x, t, loss, reduction)
  y = forward(params, x2, precision=precision).a[-1]
  return _losses.reduce(_losses.get(loss).value(y, t2), reduction)


def grad(params, x, t, loss: str = "squared_error", reduction: str = "mean", *,
         precision=DEFAULT_PRECISION):
  """dC/dparams: the second half of ``value_and_grad``."""
  return value_and_grad(params, x, t, loss, reduction, precision=precision)[1]


def deltas(params, x, t, loss: str = "squared_error", reduction: str = "mean", *,
           precision=DEFAULT_PRECISION) -> Deltas:
  """(delta_1, ..., delta_L), delta_l = dC/dz_l of the reduced loss, each (B, n_l)."""
  tape, _, delta_L, single = _prepare(params, x, t, loss, reduction, precision)
  return unbatched(_backward(params, tape, delta_L, precision), single)


def input_grad(params, x, t, loss: str = "squared_error", reduction: str = "mean", *,
               precision=DEFAULT_PRECISION) -> Array:
  """dC/dx = delta_1 W_1, shape (B, n_0) or (n_0,)."""
  tape, _, delta_L, single = _prepare(params, x, t, loss, reduction, precision)
  delta_1 = _backward(params, tape, delta_L, precision)[0]
  dx = pull_back(delta_1, params[0].W, precision=precision)  # (26), corrected: dC/dx = delta_1 W_1
  return unbatched(dx, single)


def per_example_grads(params, x, t, loss: str = "squared_error", *,
                      precision=DEFAULT_PRECISION):
  """The gradient of each example's own loss C_b: a grads tree with a leading axis B.

  delta_l of the summed loss has rows dC_b/dz_l, so dC_b/dW_l = delta_{l,b} a_{l-1,b}^T (39)
  for each b, without a loop or ``vmap``.
  """
  tape, _, delta_L, single = _prepare(params, x, t, loss, "sum", precision)
  out = []
  for layer, delta, a_prev in zip(params, _backward(params, tape, delta_L, precision), tape.a[:-1]):
    dW = delta[:, :, None] * a_prev[:, None, :]  # (39) per example: delta_{l,b}^T a_{l-1,b}^T (delta a row, a a column)
    db = None if layer.b is None else delta  # dC_b/db_l = delta_{l,b}
    out.append(Layer(dW, db, layer.activation))
  return unbatched(tuple(out), single)


def lambdas(params, x, *, precision=DEFAULT_PRECISION) -> Lambdas:
  """(lambda_1, ..., lambda_L), lambda_l = dy/dz_l, each of shape (B, n_L, n_l).

  lambda_L = diag f'_L(z_L) (27) (the softmax Jacobian for softmax); then
  lambda_{l-1} = lambda_l W_l diag f'_{l-1}(z_{l-1}) (30), corrected.
  """
  x2, single = check_x(params, x)
  tape = forward(params, x2, precision=precision)
  lam_L = _activations.jacobian(params[-1].activation, tape.z[-1], tape.a[-1])  # (27)
  lams = _backward(params, tape, lam_L, precision)  # (30), corrected, row by row; its l = 1 step is (31)
  return unbatched(lams, single)
