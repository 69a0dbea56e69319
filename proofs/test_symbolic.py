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
import mpmath
import numpy as np
import pytest
import sympy as sp

import bpref
from bpref.error import normwise_error
from bpref.problems import problem_tolerance
from bpref.tables import pointwise
from bpref.tolerance import gradient_tolerance


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


# ---------------------------------------------------------------- the proofs tied to the code

# Every elementwise activation family of bpref, written out in mpmath from its mathematical
# definition (not from bpref's code): f and f'. At a kink f' takes bpref's convention
# (proofs/derivation.md, section 8): relu'(0) = 0, leaky_relu'(0) = 1, elu'(0) = 1,
# selu'(0) = scale alpha.
_SELU_ALPHA = mpmath.mpf("1.6732632423543772848170429916717")
_SELU_SCALE = mpmath.mpf("1.0507009873554804934193349852946")
_LEAKY = mpmath.mpf(0.01)  # the slope bpref multiplies by: the float64 nearest 0.01, exactly
_GELU_K = mpmath.mpf(0.044715)


def _sig(z):
  return 1 / (1 + mpmath.exp(-z))


def _phi_cdf(z):
  return mpmath.erfc(-z / mpmath.sqrt(2)) / 2


def _gelu_tanh_u(z):
  return mpmath.sqrt(2 / mpmath.pi) * (z + _GELU_K * z ** 3)


MP_ACTIVATIONS = {
    "identity": (lambda z: z, lambda z: mpmath.mpf(1)),
    "relu": (lambda z: z if z > 0 else mpmath.mpf(0), lambda z: mpmath.mpf(1 if z > 0 else 0)),
    "leaky_relu": (lambda z: z if z >= 0 else _LEAKY * z,
                   lambda z: mpmath.mpf(1) if z >= 0 else _LEAKY),
    "elu": (lambda z: z if z > 0 else mpmath.expm1(z), lambda z: mpmath.mpf(1) if z > 0 else mpmath.exp(z)),
    "selu": (lambda z: _SELU_SCALE * (z if z > 0 else _SELU_ALPHA * mpmath.expm1(z)),
             lambda z: _SELU_SCALE * (1 if z > 0 else _SELU_ALPHA * mpmath.exp(z))),
    "gelu": (lambda z: z * _phi_cdf(z),
             lambda z: _phi_cdf(z) + z * mpmath.exp(-z * z / 2) / mpmath.sqrt(2 * mpmath.pi)),
    "gelu_tanh": (lambda z: z * (1 + mpmath.tanh(_gelu_tanh_u(z))) / 2,
                  lambda z: ((1 + mpmath.tanh(_gelu_tanh_u(z))) / 2
                             + z * mpmath.sech(_gelu_tanh_u(z)) ** 2 * mpmath.sqrt(2 / mpmath.pi)
                             * (1 + 3 * _GELU_K * z * z) / 2)),
    "silu": (lambda z: z * _sig(z), lambda z: _sig(z) * (1 + z * (1 - _sig(z)))),
    "mish": (lambda z: z * mpmath.tanh(mpmath.log1p(mpmath.exp(z))),
             lambda z: (mpmath.tanh(mpmath.log1p(mpmath.exp(z)))
                        + z * mpmath.sech(mpmath.log1p(mpmath.exp(z))) ** 2 * _sig(z))),
    "softplus": (lambda z: mpmath.log1p(mpmath.exp(z)), _sig),
    "sigmoid": (_sig, lambda z: _sig(z) * (1 - _sig(z))),
    "tanh": (mpmath.tanh, lambda z: mpmath.sech(z) ** 2),
    "softsign": (lambda z: z / (1 + abs(z)), lambda z: 1 / (1 + abs(z)) ** 2),
    "sin": (mpmath.sin, mpmath.cos),
}
KINK_CONVENTION = {"relu": 0, "leaky_relu": 1, "elu": 1, "selu": _SELU_SCALE * _SELU_ALPHA, "softsign": 1}


def test_every_elementwise_activation_family_is_covered():
  elementwise = {name for name, act in bpref.activations.ACTIVATIONS.items() if act.elementwise}
  assert set(MP_ACTIVATIONS) == elementwise
  for name in bpref.activations.KINKED:  # the closed form's f'(0) is bpref's convention
    assert MP_ACTIVATIONS[name][1](mpmath.mpf(0)) == KINK_CONVENTION[name]


@functools.lru_cache(maxsize=None)
def proven_closed_form(sizes):
  """The proven expressions of ``prove(sizes)`` compiled for mpmath, once per architecture.

  Returns (evaluate, net): evaluate(acts, values, u) gives y, [dC/dW_l], [dC/db_l], dC/dx at
  the point ``values`` (symbol -> mpf), with f_l, f_l' those of MP_ACTIVATIONS[acts[l-1]].
  """
  net = symbolic_network(sizes)
  hand = handwritten(net)
  L = len(sizes) - 1
  current = {}
  namespace = {}
  for l in range(1, L + 1):
    namespace[f"f{l}"] = lambda z, l=l: MP_ACTIVATIONS[current[l]][0](z)
    namespace[f"df{l}"] = lambda z, l=l: MP_ACTIVATIONS[current[l]][1](z)
  symbols = ([w for W in net["Ws"] for w in W] + [c for b in net["bs"] for c in b]
             + list(net["x"]) + list(net["u"]))
  exprs = ([list(net["a"][-1])] + [list(d) for d in hand["dW"]] + [list(d) for d in hand["delta"]]
           + [list(hand["dx"])] + [list(z) for z in net["z"]] + [list(a) for a in net["a"]])
  fn = sp.lambdify(symbols, exprs, modules=[namespace, "mpmath"])

  def evaluate(acts, Ws, bs, x, u):
    current.update({l: act for l, act in enumerate(acts, start=1)})
    flat = [w for W in Ws for w in np.ravel(W)] + [c for b in bs for c in b] + list(x) + list(u)
    with mpmath.workdps(60):
      out = fn(*[mpmath.mpf(float(v)) for v in flat])
      dfz = [[MP_ACTIVATIONS[act][1](z) for z in out[2 + 2 * L + l]] for l, act in enumerate(acts)]
    y = out[0]
    dW = [np.reshape(out[1 + l], (sizes[l + 1], sizes[l])) for l in range(L)]
    db = out[1 + L:1 + 2 * L]
    a = out[2 + 3 * L:]
    return y, dW, db, out[1 + 2 * L], dict(a=a, df=dfz)

  return evaluate


def _floats(v):
  return np.asarray([[float(e) for e in row] for row in v]) if np.ndim(v) == 2 \
      else np.asarray([float(e) for e in v])


def _exact(evaluate, acts, Ws, bs, x, t):
  """The proven closed form at (Ws, bs, x) for C = sum_k (t_k - y_k)^2: u = dC/dy = -2 (t - y).

  Also the magnitudes M_X of the terms summed into each entry of X (the scale of the
  inner-product bound behind (T), proofs/tolerance.md (R1)): A_0 = |x|,
  A_l = |a_l| + |f'_l(z_l)| (|W_l| A_{l-1} + |b_l|); M_delta_L = |u| F_L,
  M_delta_{l-1} = (M_delta_l |W_l|) F_{l-1}; M_dW_l = M_delta_l^T A_{l-1}^T; M_dx = M_delta_1 |W_1|,
  with F_l = |f'_l(z_l)| + |f''_l(z_l)| (``Activation.d2f``): a z_l rounded in the forward pass
  moves f'_l by |f''_l| times its rounding (R1), which next to a root of f' is all there is.
  """
  y, *_ = evaluate(acts, Ws, bs, x, [0] * len(t))
  with mpmath.workdps(60):
    u = [-2 * (mpmath.mpf(float(tk)) - yk) for tk, yk in zip(t, y)]
    C = sum((mpmath.mpf(float(tk)) - yk) ** 2 for tk, yk in zip(t, y))
  _, dW, db, dx, fwd = evaluate(acts, Ws, bs, x, u)
  df = [np.abs(_floats(d)) for d in fwd["df"]]
  A = [np.abs(np.asarray(x, float))]
  F = []
  for l, (W, b) in enumerate(zip(Ws, bs)):
    a_prev, a_l = (np.asarray(x, float) if l == 0 else _floats(fwd["a"][l])), _floats(fwd["a"][l + 1])
    d2f = bpref.activations.get(acts[l]).d2f
    F.append(df[l] + (0.0 if d2f is None else pointwise(d2f, W @ a_prev + b, a_l)))
    A.append(np.abs(a_l) + df[l] * (np.abs(W) @ A[-1] + np.abs(b)))
  M_delta = [None] * len(Ws)
  M_delta[-1] = np.abs(_floats(u)) * F[-1]
  for l in range(len(Ws) - 1, 0, -1):
    M_delta[l - 1] = (M_delta[l] @ np.abs(Ws[l])) * F[l - 1]
  exact = dict(C=float(C), dW=[_floats(d) for d in dW], db=[_floats(d) for d in db], dx=_floats(dx))
  scale = dict(C=abs(float(C)), dW=[np.outer(m, a) for m, a in zip(M_delta, A)], db=M_delta,
               dx=M_delta[0] @ np.abs(Ws[0]))
  return exact, scale


def _error(actual, expected, terms):
  """||actual - expected||_inf over the largest term magnitude: (T)'s measure, cancellation-aware."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape and np.all(np.isfinite(actual))
  scale = max(float(np.max(np.abs(expected))), float(np.max(terms)))
  diff = float(np.max(np.abs(actual - expected)))
  return diff / scale if scale > 0 else diff


def _assignments(L):
  """Activations per layer so that every family of MP_ACTIVATIONS sits in some layer (L at a time)."""
  names = sorted(MP_ACTIVATIONS)
  return [tuple(names[(i + l) % len(names)] for l in range(L)) for i in range(0, len(names), L)]


def _value_and_grad(p, x, t):  # op by op: one compilation per (sizes, activations) would cost more
  return (bpref.value_and_grad(p, x, t, "squared_error", "sum"),
          bpref.input_grad(p, x, t, "squared_error", "sum"))


def _check_against_code(evaluate, sizes, acts, Ws, bs, x, t):
  """bpref's float64 C, dC/dW_l, dC/db_l, dC/dx against the proven closed form, within (T)."""
  params = tuple(bpref.Layer(jnp.asarray(W), jnp.asarray(b), act) for W, b, act in zip(Ws, bs, acts))
  exact, terms = _exact(evaluate, acts, Ws, bs, x, t)
  (C_ours, grads), dx_ours = _value_and_grad(params, jnp.asarray(x), jnp.asarray(t))
  tol = problem_tolerance(params, x, np.float64)
  assert tol < 1e-11, (sizes, acts, tol)  # a rounding bound, not a loose one
  errors = [_error(C_ours, exact["C"], terms["C"]), _error(dx_ours, exact["dx"], terms["dx"])]
  errors += [_error(g.W, e, m) for g, e, m in zip(grads, exact["dW"], terms["dW"])]
  errors += [_error(g.b, e, m) for g, e, m in zip(grads, exact["db"], terms["db"])]
  assert max(errors) <= tol, (sizes, acts, errors, tol)
  return exact["dW"], exact["db"]


@pytest.mark.parametrize("sizes", ARCHITECTURES, ids=lambda s: "-".join(map(str, s)))
def test_proven_closed_form_evaluates_to_bpref(sizes):
  """For every proved architecture and every activation family: the proven expressions of
  ``prove(sizes)``, evaluated exactly (mpmath, 60 digits) at random float64 points, equal
  bpref.value_and_grad's and bpref.input_grad's float64 results within the rounding model (T)
  of bpref.tolerance. Draws with an identically zero gradient (dead relu units) are redrawn."""
  evaluate = proven_closed_form(sizes)
  L = len(sizes) - 1
  rng = np.random.default_rng(sum(n * 10 ** i for i, n in enumerate(sizes)))
  for acts in _assignments(L):
    for _ in range(20):
      Ws = [rng.normal(size=(m, n)) / np.sqrt(n) for n, m in zip(sizes[:-1], sizes[1:])]
      bs = [rng.normal(size=(m,)) * 0.5 for m in sizes[1:]]
      x, t = rng.normal(size=(sizes[0],)), rng.normal(size=(sizes[-1],))
      dW, db = _check_against_code(evaluate, sizes, acts, Ws, bs, x, t)
      if all(np.any(d != 0) for d in dW):
        break
    else:
      pytest.fail(f"no draw with a non-zero gradient in every layer: {sizes}, {acts}")


@pytest.mark.parametrize("name", sorted(KINK_CONVENTION))
def test_closed_form_with_the_kink_convention_is_what_bpref_computes(name):
  """At z_1 = 0 exactly (x = 0, b_1 = 0) bpref computes the proven closed form with f'(0)
  replaced by its convention (proofs/derivation.md, section 8): dC/db_1 = delta_1 and
  dC/dx = delta_1 W_1 carry f'_1(0) and are compared, not zero."""
  sizes = (2, 3, 2)
  evaluate = proven_closed_form(sizes)
  rng = np.random.default_rng(8)
  Ws = [rng.normal(size=(m, n)) / np.sqrt(n) for n, m in zip(sizes[:-1], sizes[1:])]
  bs = [np.zeros(3), rng.normal(size=(2,))]
  x, t = np.zeros(2), rng.normal(size=(2,))
  _, db = _check_against_code(evaluate, sizes, (name, "tanh"), Ws, bs, x, t)
  assert np.all(db[0] != 0) == (KINK_CONVENTION[name] != 0)
