"""Symbolic proofs of batch normalization's backward step (proofs/batchnorm.md), and a
counterexample to each classic mistake listed there.

Every input (x, gamma, beta, eps) and the output cotangent g = dC/dout are independent symbols;
the loss enters only through g, since dC/dtheta = sum g (dout/dtheta) for every C
(proofs/test_symbolic.py). The forward step is written from its definition, each channel's
statistics a sum over every index of x with that channel (no (BN0) rearrangement); the
handwritten backward step is the code's route, through the (m, C) matrix of (BN0). So proving
that the two agree proves (BN0) and (BN8)-(BN11) for every loss, at these sizes:

* x of shape (3, 1): three examples of one channel;
* x of shape (2, 2): two examples (N = 2, where xhat = +-sqrt(var / (var + eps))) of two channels;
* x of shape (1, 2, 1, 2): spatial, one image of two channels of 1 x 2 pixels (N = 1, m = 2).

Each channel's rstd = (var + eps)^(-1/2) is a power of a polynomial; every power of it is written
s_c^(-2e) for a new symbol s_c, which leaves polynomials whose difference expands to zero: the
identity holds for every s_c, in particular for s_c = sqrt(var_c + eps) (the device of
proofs/test_layers_symbolic.py). A mistake is shown by an exact point where it differs: rational
inputs, roots evaluated to 30 digits.
"""

import functools

import jax.numpy as jnp
import numpy as np
import sympy as sp

from bpref.layers import batchnorm
from bpref.tolerance import tolerance


def differs(a, b, at: dict) -> bool:
  """Whether a and b differ at the exact point ``at`` (evaluated to 30 digits)."""
  return abs(sp.N((a - b).xreplace(at), 30)) > 1e-12


def _channel_indices(shape, c):
  """Every index of an array of ``shape`` whose channel (axis 1) is c."""
  return [i for i in np.ndindex(*shape) if i[1] == c]


def symbolic_batchnorm(shape, ddof: int = 0):
  """Symbols x and g of ``shape`` (N, C, ...), gamma, beta, eps, and the forward step from its
  definition: channel c's mean and variance over every index whose axis 1 is c. ``ddof=1``
  divides the variance by m - 1 (np.var(ddof=1)): a mistake."""
  C = shape[1]
  x = np.empty(shape, dtype=object)
  g = np.empty(shape, dtype=object)
  for i in np.ndindex(*shape):
    name = "_".join(map(str, i))
    x[i], g[i] = sp.Symbol(f"x{name}", real=True), sp.Symbol(f"g{name}", real=True)
  gamma = sp.symbols(f"gamma0:{C}", real=True)
  beta = sp.symbols(f"beta0:{C}", real=True)
  eps = sp.Symbol("eps", positive=True)
  out = np.empty(shape, dtype=object)
  rstd = []
  for c in range(C):
    idx = _channel_indices(shape, c)
    m = len(idx)
    mu = sum(x[i] for i in idx) / m  # (BN1)
    var = sum((x[i] - mu) ** 2 for i in idx) / (m - ddof)  # (BN2)
    r = 1 / sp.sqrt(var + eps)  # (BN3)
    for i in idx:
      out[i] = (x[i] - mu) * r * gamma[c] + beta[c]  # (BN4), (BN5)
    rstd.append(r)
  phi = sum(g[i] * out[i] for i in np.ndindex(*shape))
  return dict(x=x, g=g, gamma=gamma, beta=beta, eps=eps, out=out, rstd=rstd, phi=phi,
              shape=shape, C=C)


def _rows(v):
  """(BN0): an object array (N, C, *spatial) as the (m, C) matrix, channels last."""
  return np.moveaxis(v, 1, -1).reshape(-1, v.shape[1])


def _unrows(v, shape):
  return np.moveaxis(v.reshape((shape[0],) + tuple(shape[2:]) + (shape[1],)), -1, 1)


def batchnorm_hand(bn, mean_term=True, variance_term=True, gamma_in_dxhat=True,
                   m2_divisor=None, layout=_rows):
  """(dx, dgamma, dbeta) by (BN0), (BN8)-(BN11) on the symbolic layer; the flags drop a term
  (mistakes). ``m2_divisor`` is what the xhat term's sum divides by (m; m - 1 is the unbiased
  layer's own); ``layout`` rearranges x into rows (``_rows``; a plain reshape is a mistake)."""
  shape, C = bn["shape"], bn["C"]
  X, G = layout(bn["x"]), layout(bn["g"])  # (BN0)
  m = X.shape[0]
  dX = np.empty(X.shape, dtype=object)
  dgamma, dbeta = [], []
  for c in range(C):
    col = X[:, c]
    mu = sum(col) / m
    if layout is _rows:
      r = bn["rstd"][c]
    else:  # the columns of another layout have statistics of their own
      r = 1 / sp.sqrt(sum((v - mu) ** 2 for v in col) / m + bn["eps"])
    xhat = [(v - mu) * r for v in col]  # (BN4)
    dxhat = [G[n, c] * (bn["gamma"][c] if gamma_in_dxhat else 1) for n in range(m)]  # (BN8)
    m1 = sum(dxhat) / m if mean_term else 0
    m2 = sum(d * h for d, h in zip(dxhat, xhat)) / (m2_divisor or m) if variance_term else 0
    for n in range(m):
      dX[n, c] = r * (dxhat[n] - m1 - xhat[n] * m2)  # (BN9)
    dgamma.append(sum(G[n, c] * xhat[n] for n in range(m)))  # (BN10)
    dbeta.append(sum(G[n, c] for n in range(m)))  # (BN11)
  dx = _unrows(dX, shape) if layout is _rows else dX.reshape(shape)
  return dict(dx=dx, dgamma=dgamma, dbeta=dbeta)


def _without_roots(expr, bn):
  """expr with each channel's (var + eps)^e written s_c^(-2e): a polynomial in s_c and the inputs."""
  for c, r in enumerate(bn["rstd"]):
    base, s = r.base, sp.Symbol(f"s{c}", positive=True)  # r = base^(-1/2)
    expr = expr.replace(lambda e, base=base: e.is_Pow and e.base == base,
                        lambda e, s=s: s ** (-2 * e.exp))
  return expr


def _is_zero(expr, bn) -> bool:
  return sp.expand(_without_roots(expr, bn)) == 0


def _proof(shape):
  bn = symbolic_batchnorm(shape)
  hand = batchnorm_hand(bn)
  for i in np.ndindex(*shape):
    assert _is_zero(sp.diff(bn["phi"], bn["x"][i]) - hand["dx"][i], bn), ("dx", i)
  for c in range(bn["C"]):
    assert _is_zero(sp.diff(bn["phi"], bn["gamma"][c]) - hand["dgamma"][c], bn), ("dgamma", c)
    assert sp.expand(sp.diff(bn["phi"], bn["beta"][c]) - hand["dbeta"][c]) == 0, ("dbeta", c)


def test_batchnorm_backward_equals_sympy_derivative():
  """(BN8)-(BN11) are the derivative of sum(g * out): three examples of one channel, two
  examples of two channels (N = 2)."""
  _proof((3, 1))
  _proof((2, 2))


def test_spatial_batchnorm_backward_equals_sympy_derivative():
  """(BN0): the statistics of channel c run over (N, H, W); the code's rows give the derivative."""
  _proof((1, 2, 1, 2))


def test_a_batch_of_one_has_zero_input_gradient():
  """m = 1: x - mu = 0, so xhat = 0, out = beta, dx = 0 and dgamma = 0 whatever eps."""
  bn = symbolic_batchnorm((1, 2))
  hand = batchnorm_hand(bn)
  for c in range(2):
    assert sp.simplify(bn["out"][0, c] - bn["beta"][c]) == 0
    assert sp.diff(bn["phi"], bn["x"][0, c]) == 0
    assert sp.expand(hand["dx"][0, c]) == 0 and sp.expand(hand["dgamma"][c]) == 0


def test_a_batch_of_two_has_an_input_gradient_of_order_eps():
  """N = 2: xhat = +-sqrt(var / (var + eps)), and dx_1 = -dx_2 = r (dxhat_1 - dxhat_2) eps /
  (2 (var + eps)): out barely moves with x, and dx vanishes with eps (section 3)."""
  bn = symbolic_batchnorm((2, 1))
  dx = sp.diff(bn["phi"], bn["x"][0, 0])
  g0, g1 = bn["g"][:, 0]
  r, eps = bn["rstd"][0], bn["eps"]
  claim = r ** 3 * bn["gamma"][0] * (g0 - g1) * eps / 2  # r eps / (var + eps) = r^3 eps
  # eps enters the claim outside the root: write it as 1 / r^2 - var, r^2 (var + eps) = 1
  s, var = sp.Symbol("s0", positive=True), r.base - eps
  assert sp.expand(_without_roots(dx - claim, bn).xreplace({eps: s ** -2 - var})) == 0
  assert _is_zero(sp.diff(bn["phi"], bn["x"][1, 0]) + dx, bn)


@functools.cache
def _case(shape=(3, 2), ddof=0):
  bn = symbolic_batchnorm(shape, ddof)
  rng = np.random.default_rng(5)
  symbols = list(bn["x"].ravel()) + list(bn["g"].ravel()) + list(bn["gamma"]) + list(bn["beta"])
  at = {s: sp.Rational(int(v), 8) for s, v in zip(symbols, rng.integers(-16, 17, len(symbols)))}
  at[bn["eps"]] = sp.Rational(1, 100)
  return bn, at


def _true_dx(bn):
  out = np.empty(bn["shape"], dtype=object)
  for i in np.ndindex(*bn["shape"]):
    out[i] = sp.diff(bn["phi"], bn["x"][i])
  return out


def _differs_somewhere(a, b, at) -> bool:
  return any(differs(p, q, at) for p, q in zip(np.ravel(a), np.ravel(b)))


def test_batchnorm_mistake_mean_term_missing():
  """dx = rstd (dxhat - xhat mean(dxhat xhat)) misses the path through mu: off by rstd mean(dxhat)."""
  bn, at = _case()
  assert _differs_somewhere(_true_dx(bn), batchnorm_hand(bn, mean_term=False)["dx"], at)


def test_batchnorm_mistake_variance_term_missing():
  """dx = rstd (dxhat - mean(dxhat)) misses the path through var: off by rstd xhat mean(dxhat xhat)."""
  bn, at = _case()
  assert _differs_somewhere(_true_dx(bn), batchnorm_hand(bn, variance_term=False)["dx"], at)


def test_batchnorm_mistake_statistics_held_constant():
  """dx = rstd dxhat (running_stats): mu and var treated as constants, as running statistics
  would be; the training-mode layer's statistics depend on x. Right only when both dropped
  terms vanish, which they do not here."""
  bn, at = _case()
  wrong = batchnorm_hand(bn, mean_term=False, variance_term=False)["dx"]
  assert _differs_somewhere(_true_dx(bn), wrong, at)


def test_batchnorm_mistake_gamma_missing():
  """dxhat = dout, not dout gamma: dx off by the factor gamma_c in each channel."""
  bn, at = _case()
  assert _differs_somewhere(_true_dx(bn), batchnorm_hand(bn, gamma_in_dxhat=False)["dx"], at)


def test_batchnorm_mistake_unbiased_variance():
  """np.var(ddof=1) in the forward step is another layer: its output differs; (BN9) applied to
  its rstd and xhat is the gradient of neither layer; that layer's own gradient has m - 1 in
  place of m in the xhat term."""
  bn, at = _case()
  unbiased, _ = _case(ddof=1)
  assert differs(bn["out"][0, 0], unbiased["out"][0, 0], at)
  mixed = batchnorm_hand(unbiased)["dx"]
  true, true_unbiased = _true_dx(bn), _true_dx(unbiased)
  assert _differs_somewhere(true, mixed, at)
  assert _differs_somewhere(true_unbiased, mixed, at)
  own = batchnorm_hand(unbiased, m2_divisor=2)["dx"]  # m = 3
  assert not _differs_somewhere(true_unbiased, own, at)


def test_batchnorm_mistake_spatial_statistics_per_position():
  """wrong_axes: x (N, C, H, W) normalized as the dense layer of x reshaped (N, C H W), each
  position (c, h, w) over N alone, is another layer; with N = 1 it even has var = 0 everywhere."""
  shape = (2, 1, 1, 2)
  bn, at = _case(shape)
  true = _true_dx(bn)
  per_position = symbolic_batchnorm((2, 2))  # the dense layer of x reshaped (N, C H W) = (2, 2)
  moved = {per_position["x"][n, w]: bn["x"][n, 0, 0, w] for n in range(2) for w in range(2)}
  moved.update({per_position["g"][n, w]: bn["g"][n, 0, 0, w] for n in range(2) for w in range(2)})
  moved.update({per_position["gamma"][w]: bn["gamma"][0] for w in range(2)})  # gamma repeated
  wrong = np.array([[sp.diff(per_position["phi"], per_position["x"][n, w]).xreplace(moved)
                     for w in range(2)] for n in range(2)])
  assert _differs_somewhere(true.reshape(2, 2), wrong, at)


def test_batchnorm_mistake_statistics_over_the_features():
  """wrong_axes, dense: the statistics over axis 1 (layer normalization's) instead of axis 0."""
  bn, at = _case()
  x, g, gamma, eps = bn["x"], bn["g"], bn["gamma"], bn["eps"]
  wrong_phi = 0
  for n in range(3):
    mu = (x[n, 0] + x[n, 1]) / 2
    r = 1 / sp.sqrt(((x[n, 0] - mu) ** 2 + (x[n, 1] - mu) ** 2) / 2 + eps)
    wrong_phi += sum(g[n, c] * ((x[n, c] - mu) * r * gamma[c] + bn["beta"][c]) for c in range(2))
  wrong = np.array([[sp.diff(wrong_phi, x[n, c]) for c in range(2)] for n in range(3)])
  assert _differs_somewhere(_true_dx(bn), wrong, at)


def test_batchnorm_mistake_reshape_without_transpose():
  """x.reshape(-1, C) of an (N, C, H, W) array is not (BN0): its columns mix channels."""
  bn, at = _case((1, 2, 1, 2))
  wrong = batchnorm_hand(bn, layout=lambda v: v.reshape(-1, v.shape[1]))
  assert _differs_somewhere(_true_dx(bn), wrong["dx"], at)
  true_dgamma = [sp.diff(bn["phi"], bn["gamma"][c]) for c in range(2)]
  assert _differs_somewhere(true_dgamma, wrong["dgamma"], at)


def test_batchnorm_proof_evaluates_to_bpref():
  """The proven formulas, evaluated at random float64 values, are what bpref.layers computes,
  within the rounding bound (BN19) of two float64 evaluations (m = 2 cancels: dx is O(eps))."""
  rng = np.random.default_rng(11)
  for shape in ((2, 2), (1, 2, 1, 2)):
    bn = symbolic_batchnorm(shape)
    hand = batchnorm_hand(bn)
    symbols = list(bn["x"].ravel()) + list(bn["g"].ravel()) + list(bn["gamma"]) + list(
        bn["beta"]) + [bn["eps"]]
    fn = sp.lambdify(symbols, [list(hand["dx"].ravel()), hand["dgamma"], hand["dbeta"]],
                     modules="numpy")
    x, g = rng.normal(size=shape), rng.normal(size=shape)
    gamma, beta = rng.normal(size=shape[1]), rng.normal(size=shape[1])
    exact = fn(*x.ravel(), *g.ravel(), *gamma, *beta, 1e-5)
    _, cache = batchnorm.forward(jnp.asarray(x), jnp.asarray(gamma), jnp.asarray(beta))
    ours = batchnorm.backward(cache, jnp.asarray(g))
    bounds = batchnorm.bounds(cache, jnp.asarray(beta), jnp.asarray(g))
    tol = tolerance(np.float64, inner=x.size // shape[1] + 2)
    for mine, proven, M in zip(ours, exact, (bounds.dx, bounds.dgamma, bounds.dbeta)):
      proven = np.asarray(proven, float).reshape(np.shape(mine))
      assert np.all(np.abs(np.asarray(mine) - proven) <= tol * np.asarray(M))
