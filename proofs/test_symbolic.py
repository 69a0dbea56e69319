"""Symbolic proofs: the handwritten recursions equal sympy's derivatives exactly.

Weights, biases, inputs and the output cotangent are independent symbols; every
activation f_l is an undefined function whose derivative is another undefined
function f_l' (sympy applies the chain rule through ``fdiff``). No value of
anything is assumed, so an identity that holds here holds for every network of
these sizes and every differentiable activation (proofs/derivation.md, section 8).

The loss enters only through its gradient u = dC/dy at y: by the chain rule
dC/dtheta = sum_k (dC/dy_k)(dy_k/dtheta), so checking the recursion for the
linear functional C = u . y with symbolic u proves it for every C.

For each architecture the test proves, entry by entry:
  lambda_l = dy/db_l                      (27), (30), corrected
  delta_l = dC/db_l and delta_l = u lambda_l  (34), (37), corrected
  dC/dW_l = delta_l^T a_{l-1}^T             (39), corrected
  dC/dx = delta_1 W_1                       (26), corrected
Equality is decided by expanding the difference (arguments of f_l and f_l' are
left as they are: both sides share them) and asking for the zero polynomial.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy as sp

import bpref
from bpref.tolerance import gradient_tolerance, normwise_error


@functools.lru_cache(maxsize=None)
def generic_activation(l):
  """f_l: an undefined function whose derivative is the undefined function f_l' (one per l)."""
  df = sp.Function(f"df{l}")

  def fdiff(self, argindex=1):
    return df(self.args[0])

  return type(f"f{l}", (sp.Function,), {"fdiff": fdiff, "nargs": 1}), df


def symbolic_network(sizes):
  """Symbols W_l, b_l, x, u and the forward pass z_l, a_l as sympy column matrices."""
  L = len(sizes) - 1
  Ws = [sp.Matrix(sizes[l], sizes[l - 1], lambda i, j, l=l: sp.Symbol(f"w{l}_{i}{j}"))
        for l in range(1, L + 1)]
  bs = [sp.Matrix(sizes[l], 1, lambda i, j, l=l: sp.Symbol(f"b{l}_{i}")) for l in range(1, L + 1)]
  x = sp.Matrix(sizes[0], 1, lambda i, j: sp.Symbol(f"x{i}"))
  u = sp.Matrix(1, sizes[-1], lambda i, j: sp.Symbol(f"u{j}"))
  fs, dfs = zip(*(generic_activation(l) for l in range(1, L + 1)))
  zs, acts = [], [x]
  for W, b, f in zip(Ws, bs, fs):
    z = W * acts[-1] + b  # (7) with bias
    zs.append(z)
    acts.append(z.applyfunc(f))  # (8)
  return dict(Ws=Ws, bs=bs, x=x, u=u, f=fs, df=dfs, z=zs, a=acts)


def handwritten(net):
  """The corrected recursions of proofs/derivation.md, on the symbolic network."""
  Ws, dfs, zs, acts, u = net["Ws"], net["df"], net["z"], net["a"], net["u"]
  L = len(Ws)
  fprime = [sp.diag(*[dfs[l](zi) for zi in zs[l]]) for l in range(L)]  # diag f'_l(z_l)
  lam = [None] * L
  lam[L - 1] = fprime[L - 1]  # (27)
  for l in range(L - 1, 0, -1):
    lam[l - 1] = lam[l] * Ws[l] * fprime[l - 1]  # (30): lambda_l W_{l+1} diag f'_l(z_l), 0-based
  delta = [None] * L
  delta[L - 1] = u * fprime[L - 1]  # (34)
  for l in range(L - 1, 0, -1):
    delta[l - 1] = delta[l] * Ws[l] * fprime[l - 1]  # (37)
  dW = [delta[l].T * acts[l].T for l in range(L)]  # (39): outer product
  dx = delta[0] * Ws[0]  # dC/dx = delta_1 W_1
  return dict(lam=lam, delta=delta, dW=dW, dx=dx)


def is_zero(expr):
  """Whether expr is the zero polynomial in the weights, biases, inputs, u and the applied
  f_l(.), f_l'(.) taken as independent atoms (sound: zero as such a polynomial means zero)."""
  atoms = {atom: sp.Dummy() for atom in expr.atoms(sp.Function)}
  return sp.expand(expr.xreplace(atoms)) == 0


def prove(sizes):
  net = symbolic_network(sizes)
  hand = handwritten(net)
  y = net["a"][-1]
  C = (net["u"] * y)[0, 0]
  L = len(sizes) - 1
  for l in range(L):
    b = net["bs"][l]
    for i in range(sizes[l + 1]):
      dC_db = sp.diff(C, b[i])
      assert is_zero(dC_db - hand["delta"][l][0, i]), (sizes, "delta", l + 1, i)
      for k in range(sizes[-1]):
        assert is_zero(sp.diff(y[k], b[i]) - hand["lam"][l][k, i]), (sizes, "lambda", l + 1, k, i)
      for j in range(sizes[l]):
        dC_dw = sp.diff(C, net["Ws"][l][i, j])
        assert is_zero(dC_dw - hand["dW"][l][i, j]), (sizes, "W", l + 1, i, j)
    for i in range(sizes[l + 1]):
      assert is_zero((net["u"] * hand["lam"][l])[0, i] - hand["delta"][l][0, i])  # delta = u lambda
  for j in range(sizes[0]):
    assert is_zero(sp.diff(C, net["x"][j]) - hand["dx"][0, j]), (sizes, "x", j)
  return net, hand


# Every depth 1..4 at full width 3, which covers every narrower network of the same
# depth (test_narrow_networks_are_restrictions_of_width_3_ones); and, checked directly,
# non-square layers: expansions (1 -> 3), contractions (3 -> 1), width-1 bottlenecks.
FULL_WIDTH = tuple((3,) * (L + 1) for L in (1, 2, 3, 4))
ARCHITECTURES = (
    [s for s in itertools.product((1, 2, 3), repeat=2) if s != (3, 3)]  # depth 1: all nine
    + [(1, 2, 3), (3, 2, 1), (2, 1, 3), (1, 3, 1)]  # depth 2
    + [(3, 1, 2, 3), (2, 3, 3, 1)]  # depth 3
    + [(2, 3, 1, 3, 2)]  # depth 4
    + list(FULL_WIDTH)
)


@pytest.mark.parametrize("sizes", ARCHITECTURES, ids=lambda s: "-".join(map(str, s)))
def test_handwritten_recursion_equals_sympy_derivative(sizes):
  prove(sizes)


@pytest.mark.parametrize("sizes", [(2, 1, 3), (1, 3, 2, 2), (3, 1, 1, 2)], ids=lambda s: "-".join(map(str, s)))
def test_narrow_networks_are_restrictions_of_width_3_ones(sizes):
  """Pad every layer of a narrower net to width 3 with extra units whose outgoing weights
  (and extra inputs' weights, extra outputs' u) are 0: the padded net's y, delta, dW and dx
  restrict exactly to the narrow net's. So the full-width proofs cover every width <= 3."""
  L = len(sizes) - 1
  wide, narrow = symbolic_network((3,) * (L + 1)), symbolic_network(sizes)
  zeros = {}
  for l in range(1, L + 1):
    W = wide["Ws"][l - 1]
    for i in range(3):
      for j in range(3):
        if j >= sizes[l - 1]:
          zeros[W[i, j]] = 0  # weights out of a padded unit of layer l - 1 (or a padded input)
  zeros.update({wide["u"][k]: 0 for k in range(sizes[-1], 3)})  # padded outputs carry no loss
  zeros.update({wide["x"][j]: 0 for j in range(sizes[0], 3)})
  hw, hn = handwritten(wide), handwritten(narrow)
  for l in range(L):
    for i in range(sizes[l + 1]):
      assert is_zero(wide["z"][l][i].xreplace(zeros) - narrow["z"][l][i])
      assert is_zero(hw["delta"][l][0, i].xreplace(zeros) - hn["delta"][l][0, i])
      for j in range(sizes[l]):
        assert is_zero(hw["dW"][l][i, j].xreplace(zeros) - hn["dW"][l][i, j])
  for j in range(sizes[0]):
    assert is_zero(hw["dx"][0, j].xreplace(zeros) - hn["dx"][0, j])


def test_a_wrong_recursion_is_caught():
  """The checker is not vacuous: the seed's (38), delta_1 = delta_2 W_1, is rejected."""
  net = symbolic_network((2, 2, 2))
  hand = handwritten(net)
  C = (net["u"] * net["a"][-1])[0, 0]
  literal = hand["delta"][1] * net["Ws"][0]  # (38) as printed
  assert not is_zero(sp.diff(C, net["bs"][0][0]) - literal[0, 0])


def test_symbolic_gradient_evaluates_to_bpref():
  """The proven expressions, with f = tanh, f' = 1 - tanh^2, evaluate to bpref's gradients."""
  sizes = (2, 3, 1, 2)
  net = symbolic_network(sizes)
  hand = handwritten(net)
  rng = np.random.default_rng(7)
  values, layers = {}, []
  for l, (W, b) in enumerate(zip(net["Ws"], net["bs"])):
    Wv = rng.normal(size=W.shape)
    bv = rng.normal(size=(b.shape[0],))
    values.update({W[i, j]: Wv[i, j] for i in range(W.shape[0]) for j in range(W.shape[1])})
    values.update({b[i]: bv[i] for i in range(b.shape[0])})
    layers.append(bpref.Layer(Wv, bv, "tanh"))
  xv, tv = rng.normal(size=(sizes[0],)), rng.normal(size=(sizes[-1],))
  values.update({net["x"][j]: xv[j] for j in range(sizes[0])})
  symbols = list(values) + list(net["u"])
  modules = [{f"f{l}": np.tanh for l in range(1, len(layers) + 1)},
             {f"df{l}": (lambda s: 1 - np.tanh(s) ** 2) for l in range(1, len(layers) + 1)}, "numpy"]

  exprs = [net["a"][-1], hand["dx"]] + hand["dW"] + hand["delta"]
  fn = sp.lambdify(symbols, exprs, modules=modules)  # one compiled expression for all

  y = np.asarray(fn(*values.values(), *np.zeros(sizes[-1]))[0], dtype=float).ravel()
  u = -2 * (tv - y)  # dC/dy of the squared error (14)
  out = [np.asarray(v, dtype=float) for v in fn(*values.values(), *u)]
  L = len(layers)
  dx_sym, dW_sym, delta_sym = out[1].ravel(), out[2:2 + L], out[2 + L:]
  params = tuple(bpref.Layer(jnp.asarray(p.W), jnp.asarray(p.b), p.activation) for p in layers)

  @jax.jit
  def ours(params, x, t):
    return (bpref.grad(params, x, t, "squared_error", "sum"),
            bpref.input_grad(params, x, t, "squared_error", "sum"))

  grads, dx = ours(params, jnp.asarray(xv), jnp.asarray(tv))
  tol = gradient_tolerance(np.float64)
  for l in range(L):
    assert normwise_error(grads[l].W, dW_sym[l]) <= tol
    assert normwise_error(grads[l].b, delta_sym[l].ravel()) <= tol
  assert normwise_error(dx, dx_sym) <= tol


# ---------------------------------------------------------------- softmax output layer

def test_softmax_vjp_and_cross_entropy_symbolically():
  """delta_L = g (diag a - a a^T) = a * (g - <g, a>); with C = -sum t log a, delta_L = a sum(t) - t."""
  n = 3
  z = sp.symbols("z0:3")
  g = sp.symbols("g0:3")
  t = sp.symbols("t0:3")
  e = [sp.exp(zi) for zi in z]
  a = [ei / sum(e) for ei in e]
  jac = sp.Matrix(n, n, lambda i, j: sp.diff(a[i], z[j]))
  closed = sp.Matrix(n, n, lambda i, j: (a[i] if i == j else 0) - a[i] * a[j])
  assert sp.simplify(jac - closed) == sp.zeros(n, n)
  ga = sum(gi * ai for gi, ai in zip(g, a))
  vjp = sp.Matrix(1, n, lambda _, j: a[j] * (g[j] - ga))  # bpref.activations.vjp for softmax
  assert sp.simplify(sp.Matrix([g]) * jac - vjp) == sp.zeros(1, n)
  C = -sum(ti * sp.log(ai) for ti, ai in zip(t, a))
  for j in range(n):
    grad_j = sp.diff(C, z[j])
    assert sp.simplify(grad_j - (a[j] * sum(t) - t[j])) == 0
    # The textbook a - t holds only when the targets sum to one.
    assert sp.simplify((grad_j - (a[j] - t[j])).subs(t[2], 1 - t[0] - t[1])) == 0
    assert sp.simplify(grad_j - (a[j] - t[j])) != 0
  # bpref's softmax_cross_entropy gradient is the full form, also for targets summing to 1.7.
  rng = np.random.default_rng(3)
  zv, tv = rng.normal(size=n), np.array([0.2, 0.5, 1.0])
  at = {**dict(zip(z, zv)), **dict(zip(t, tv))}
  exact = np.array([float(sp.diff(C, z[j]).subs(at)) for j in range(n)])
  ours = np.asarray(bpref.losses.get("softmax_cross_entropy").dy(jnp.asarray(zv)[None, :],
                                                                  jnp.asarray(tv)[None, :]))[0]
  assert normwise_error(ours, exact) <= gradient_tolerance(np.float64)
