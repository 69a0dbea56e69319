"""Every erratum of the seed, demonstrated (see proofs/errata.md).

Each test evaluates the seed's formula *literally*, in NumPy, on a random network,
and shows it failing where errata.md says it fails (a shape error, or a value far
from the witness), while the corrected formula and bpref's own code path agree
with the witness ``bpref.witnesses.autodiff`` (``jax.grad``) to rounding. Where errata.md
names a condition under which the seed's version happens to be right, the test
checks that too.

Conventions of this file (those of proofs/derivation.md): one example at a time,
x, z_l, a_l, b_l are 1-D arrays (column vectors), W_l has shape (n_l, n_{l-1}),
derivatives of a scalar are 1-D arrays (row vectors), Jacobians have shape
(outputs, inputs) (numerator layout). ``@`` is the matrix product, so NumPy
raises ValueError when a literal product has mismatched dimensions.

Agreement is the normwise bound of ``bpref.tolerance`` for float64 (1e-12 on
these well-conditioned nets). A literal formula "fails" when its shape differs or
its normwise error exceeds ``GAP = 1e-2``: ten orders of magnitude above the
rounding bound, so a failure cannot be rounding.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bpref
from bpref.error import normwise_error
from bpref.tolerance import gradient_tolerance
from bpref.witnesses import autodiff as reference

TOL = gradient_tolerance(np.float64)
GAP = 1e-2
LOSS = "squared_error"

# Activations with their derivatives, in NumPy (the literal formulas run on NumPy).
F = {"tanh": np.tanh, "sin": np.sin, "identity": lambda z: z}
DF = {"tanh": lambda z: 1 - np.tanh(z) ** 2, "sin": np.cos, "identity": np.ones_like}


# ---------------------------------------------------------------- helpers

def jacobian(fn):
  """The witness's Jacobian of fn (jax.jacobian, compiled once rather than run op by op)."""
  return jax.jit(jax.jacobian(fn))


def agree(actual, expected):
  actual, expected = np.asarray(actual), np.asarray(expected)
  return actual.shape == expected.shape and normwise_error(actual, expected) <= TOL


def fails(actual, expected):
  actual, expected = np.asarray(actual), np.asarray(expected)
  return actual.shape != expected.shape or normwise_error(actual, expected) > GAP


def make_net(sizes, acts, seed=0, bias=False):
  """A random network as bpref params plus one example (x, t), all float64."""
  rng = np.random.default_rng(seed)
  layers = []
  for l in range(1, len(sizes)):
    W = rng.normal(size=(sizes[l], sizes[l - 1])) / np.sqrt(sizes[l - 1])
    b = rng.normal(size=(sizes[l],)) * 0.5 if bias else None
    layers.append(bpref.Layer(jnp.asarray(W), None if b is None else jnp.asarray(b), acts[l - 1]))
  x = rng.normal(size=(sizes[0],))
  t = rng.normal(size=(sizes[-1],))
  return tuple(layers), x, t


def arrays(params):
  Ws = [np.asarray(p.W) for p in params]
  bs = [None if p.b is None else np.asarray(p.b) for p in params]
  return Ws, bs, [p.activation for p in params]


def np_forward(params, x):
  """The corrected forward pass (4)-(10) with biases: lists z = [z_1..z_L], a = [a_0..a_L]."""
  Ws, bs, acts = arrays(params)
  zs, a_s = [], [x]
  for W, b, act in zip(Ws, bs, acts):
    z = W @ a_s[-1] + (0 if b is None else b)
    zs.append(z)
    a_s.append(F[act](z))
  return zs, a_s


def dC_dy(y, t):
  return -2 * (t - y)  # (14) for C = sum_k (t_k - y_k)^2, a row vector


def corrected_deltas(params, x, t):
  """delta_L = dC/dy diag f'_L(z_L); delta_{l-1} = delta_l W_l diag f'_{l-1}(z_{l-1})."""
  Ws, _, acts = arrays(params)
  zs, a_s = np_forward(params, x)
  delta = dC_dy(a_s[-1], t) @ np.diag(DF[acts[-1]](zs[-1]))
  out = [delta]
  for l in range(len(Ws) - 1, 0, -1):
    delta = delta @ Ws[l] @ np.diag(DF[acts[l - 1]](zs[l - 1]))
    out.append(delta)
  return out[::-1]


def corrected_lambdas(params, x):
  """lambda_L = diag f'_L(z_L); lambda_{l-1} = lambda_l W_l diag f'_{l-1}(z_{l-1})."""
  Ws, _, acts = arrays(params)
  zs, _ = np_forward(params, x)
  lam = np.diag(DF[acts[-1]](zs[-1]))
  out = [lam]
  for l in range(len(Ws) - 1, 0, -1):
    lam = lam @ Ws[l] @ np.diag(DF[acts[l - 1]](zs[l - 1]))
    out.append(lam)
  return out[::-1]


ref_grad = jax.jit(reference.grad, static_argnums=(3, 4))
ref_deltas = jax.jit(reference.deltas, static_argnums=(3, 4))
bp_deltas = jax.jit(bpref.deltas, static_argnums=(3, 4))
bp_forward = jax.jit(bpref.forward)
bp_grad = jax.jit(bpref.grad, static_argnums=(3, 4))


def _outputs(module, params, x, t):
  grads = module.grad(params, x, t, LOSS, "sum")
  return dict(
      deltas=module.deltas(params, x, t, LOSS, "sum"), lambdas=module.lambdas(params, x),
      dW=[g.W for g in grads], db=[g.b for g in grads],
      dx=module.input_grad(params, x, t, LOSS, "sum"))


_witness = jax.jit(functools.partial(_outputs, reference))
_bpref_path = jax.jit(functools.partial(_outputs, bpref))


def _to_numpy(out):
  return {k: (np.asarray(v) if k == "dx" else [None if e is None else np.asarray(e) for e in v])
          for k, v in out.items()}


def witness(params, x, t):
  """What jax.grad says: deltas, lambdas, weight/bias gradients, input gradient (sum loss)."""
  return _to_numpy(_witness(params, jnp.asarray(x), jnp.asarray(t)))


def bpref_path(params, x, t):
  """The same quantities from bpref's handwritten code path (jitted, as users run it)."""
  return _to_numpy(_bpref_path(params, jnp.asarray(x), jnp.asarray(t)))


# The main network: depth 3, every layer non-square, n_L = 2 > 1, no biases (as in the seed).
SIZES = (3, 5, 4, 2)
ACTS = ("tanh", "sin", "tanh")
# A network whose hidden layers have equal widths, so that some wrong products are defined.
SQUARE = (3, 3, 3, 2)


@pytest.fixture(scope="module")
def net():
  params, x, t = make_net(SIZES, ACTS, seed=1)
  return params, x, t, witness(params, x, t), bpref_path(params, x, t)


@pytest.fixture(scope="module")
def square_net():
  params, x, t = make_net(SQUARE, ACTS, seed=2)
  return params, x, t, witness(params, x, t), bpref_path(params, x, t)


def test_harness_corrected_formulas_and_bpref_match_the_witness(net):
  params, x, t, wit, ours = net
  for key in ("deltas", "lambdas", "dW"):
    for l in range(len(params)):
      assert agree(ours[key][l], wit[key][l]), (key, l)
  corrected = corrected_deltas(params, x, t)
  for l in range(len(params)):
    assert agree(corrected[l], wit["deltas"][l])
    assert agree(corrected_lambdas(params, x)[l], wit["lambdas"][l])
  assert agree(ours["dx"], wit["dx"])


# ---------------------------------------------------------------- (2): composition order

def test_erratum_01_eq2_applies_f1_before_W1(net):
  params, x, _, _, _ = net
  Ws, _, acts = arrays(params)
  # Literal tail of (2), "W_1 . f_1(x)": f_1 on the raw input, then W_1.
  a = Ws[0] @ F[acts[0]](x)
  for W, act in zip(Ws[1:], acts[1:]):
    a = F[act](W @ a)
  y = np.asarray(bpref.predict(params, x))
  assert fails(a, y)
  # Corrected: y = (f_L o W_L o ... o f_1 o W_1)(x), equation (1).
  a = x
  for W, act in zip(Ws, acts):
    a = F[act](W @ a)
  assert agree(a, y)
  assert agree(np.asarray(reference.predict(params, x)), y)
  # The text's version is right when f_1 is the identity.
  lin, x2, _ = make_net(SIZES, ("identity",) + ACTS[1:], seed=1)
  Ws2, _, acts2 = arrays(lin)
  a = Ws2[0] @ F[acts2[0]](x2)
  for W, act in zip(Ws2[1:], acts2[1:]):
    a = F[act](W @ a)
  assert agree(a, np.asarray(bpref.predict(lin, x2)))


# ---------------------------------------------------------------- prose before (4): a_l for a_{l-1}

def test_erratum_02_weights_applied_to_a_l_not_a_lminus1(net):
  params, x, _, _, _ = net
  Ws, _, _ = arrays(params)
  zs, a_s = np_forward(params, x)
  for l in range(1, len(Ws) + 1):
    with pytest.raises(ValueError):  # literal z_l = W_l a_l: (n_l, n_{l-1}) @ (n_l,)
      Ws[l - 1] @ a_s[l]
    assert agree(Ws[l - 1] @ a_s[l - 1], zs[l - 1])  # corrected z_l = W_l a_{l-1}
  tape = bpref.forward(params, x)
  for l in range(len(Ws)):
    assert agree(np.asarray(tape.z[l]), zs[l])


# ---------------------------------------------------------------- (4)-(10): no biases, a_0 undefined

def test_erratum_03_biases_missing():
  params, x, t = make_net(SIZES, ACTS, seed=3, bias=True)
  Ws, bs, acts = arrays(params)
  a = x  # a_0 = x, which (7) needs at l = 1
  for W, act in zip(Ws, acts):
    a = F[act](W @ a)  # the seed's forward: z_l = W_l a_{l-1}
  assert fails(a, np.asarray(bpref.predict(params, x)))
  wit, ours = witness(params, x, t), bpref_path(params, x, t)
  corrected = corrected_deltas(params, x, t)
  for l in range(len(params)):
    assert agree(corrected[l], wit["db"][l])  # dC/db_l = delta_l
    assert agree(ours["db"][l], wit["db"][l])
    assert agree(ours["dW"][l], wit["dW"][l])
  # The seed's forward pass is right when every b_l = 0.
  zero = tuple(bpref.Layer(p.W, jnp.zeros_like(p.b), p.activation) for p in params)
  assert agree(a, np.asarray(bpref.predict(zero, x)))


# ---------------------------------------------------------------- one example only: batches

def test_erratum_04_batches_sum_or_mean_of_outer_products():
  params, _, _ = make_net(SIZES, ACTS, seed=4)
  rng = np.random.default_rng(4)
  B = 6
  X = rng.normal(size=(B, SIZES[0]))
  T = rng.normal(size=(B, SIZES[-1]))
  wit = ref_grad(params, X, T, LOSS, "mean")
  D = [np.asarray(d) for d in bp_deltas(params, X, T, LOSS, "mean")]  # rows delta_{l,b} / B
  A = [np.asarray(a) for a in bp_forward(params, X).a]
  for l in range(len(params)):
    with pytest.raises(ValueError):  # (39) on the batch matrices: D_l A_{l-1}, (B, n_l) @ (B, n_{l-1})
      D[l] @ A[l]
    assert agree(D[l].T @ A[l], wit[l].W)  # corrected: dC/dW_l = D_l^T A_{l-1}
    per_example = np.mean([np.outer(corrected_deltas(params, X[b], T[b])[l], X[b] if l == 0 else
                                    np_forward(params, X[b])[1][l]) for b in range(B)], axis=0)
    assert agree(per_example, wit[l].W)  # = (1/B) sum_b delta_{l,b}^T a_{l-1,b}^T
  ours = bp_grad(params, X, T, LOSS, "mean")
  per_example = jax.jit(bpref.per_example_grads, static_argnums=3)(params, X, T, LOSS)
  for l in range(len(params)):
    assert agree(ours[l].W, wit[l].W)
    for b in range(B):  # each example's own gradient: the outer product delta_{l,b}^T a_{l-1,b}^T
      a_prev = np_forward(params, X[b])[1][l]
      assert agree(per_example[l].W[b], np.outer(corrected_deltas(params, X[b], T[b])[l], a_prev))
  # With B = 1 the mean is the single example's gradient (39), corrected.
  one = ref_grad(params, X[:1], T[:1], LOSS, "mean")
  assert agree(np.outer(corrected_deltas(params, X[0], T[0])[0], X[0]), one[0].W)


# ---------------------------------------------------------------- (12) prose: dC/dW_l named for dC/dy

def test_erratum_05_first_factor_of_12_is_dC_dy_not_dC_dW(net):
  params, x, t, wit, _ = net
  y = np.asarray(bpref.predict(params, x))
  g = np.asarray(jax.grad(lambda yy: jnp.sum((jnp.asarray(t) - yy) ** 2))(jnp.asarray(y)))
  assert agree(dC_dy(y, t), g)  # the first factor of (12) is dC/dy, shape (n_L,)
  assert agree(bpref.losses.get(LOSS).dy(y[None, :], t[None, :])[0], g)
  for l in range(len(params)):
    assert fails(g, wit["dW"][l])  # which is not dC/dW_l, shape (n_l, n_{l-1})


# ---------------------------------------------------------------- (16): dz_l/dW_l is a 3-tensor

def test_erratum_06_eq16_dz_dW_is_a_three_tensor(net):
  params, x, _, wit, ours = net
  _, a_s = np_forward(params, x)
  for l, layer in enumerate(params, start=1):
    a_prev = a_s[l - 1]
    jac = np.asarray(jacobian(lambda W: W @ jnp.asarray(a_prev))(layer.W))  # (n_l, n_l, n_{l-1})
    assert fails(a_prev, jac)  # literal (16): the vector a_{l-1}
    n_l = layer.W.shape[0]
    assert agree(np.einsum("ki,j->kij", np.eye(n_l), a_prev), jac)  # dz_k/dW_ij = [k = i] a_{l-1,j}
    assert agree(ours["dW"][l - 1], wit["dW"][l - 1])  # bpref never forms the tensor
  # (16) is right (as the row a_{l-1}^T) when the layer has one unit, n_l = 1.
  rng = np.random.default_rng(6)
  W1, a1 = rng.normal(size=(1, 4)), rng.normal(size=(4,))
  jac = np.asarray(jacobian(lambda W: W @ jnp.asarray(a1))(jnp.asarray(W1)))
  assert agree(jac.reshape(4), a1)


# ---------------------------------------------------------------- (12)/(33): chain through the 3-tensor

def test_erratum_07_eq12_needs_a_contraction_not_a_matrix_product(net):
  params, x, t, wit, ours = net
  zs, a_s = np_forward(params, x)
  g = dC_dy(a_s[-1], t)
  for l in range(1, len(params) + 1):
    lam = corrected_lambdas(params, x)[l - 1]
    with pytest.raises(ValueError):  # (12) as matrix products with dz_l/dW_l = a_{l-1} (16)
      (g @ lam) @ a_s[l - 1]
    n_l = zs[l - 1].shape[0]
    dz_dW = np.einsum("ki,j->kij", np.eye(n_l), a_s[l - 1])
    assert agree(np.einsum("k,kij->ij", g @ lam, dz_dW), wit["dW"][l - 1])  # contraction over k
    assert agree(ours["dW"][l - 1], wit["dW"][l - 1])


# ---------------------------------------------------------------- (13)-(14): vector outputs

def test_erratum_08_eq13_squared_error_of_a_vector_is_a_sum(net):
  params, x, t, _, _ = net
  y = np.asarray(bpref.predict(params, x))
  literal = (t - y) ** 2  # (13) with vector y: a vector, not a loss
  C = float(bpref.loss_value(params, x, t, LOSS, "sum"))
  assert literal.shape == (SIZES[-1],) and np.ndim(C) == 0
  assert fails(literal, C)
  assert agree(np.sum((t - y) ** 2), C)  # corrected: C = sum_k (t_k - y_k)^2
  g = np.asarray(jax.grad(lambda yy: jnp.sum((jnp.asarray(t) - yy) ** 2))(jnp.asarray(y)))
  assert agree(dC_dy(y, t), g)  # (14), read as the row vector -2 (t - y)^T
  assert agree(bpref.losses.get(LOSS).dy(y[None, :], t[None, :])[0], g)
  # Taken literally, "dC/dy" of the vector (13) is the Jacobian diag(-2 (t - y)), not a gradient.
  jac = np.asarray(jacobian(lambda yy: (jnp.asarray(t) - yy) ** 2)(jnp.asarray(y)))
  assert agree(jac, np.diag(-2 * (t - y))) and fails(jac, g)
  # With one output (n_L = 1) the two readings coincide.
  y1, t1 = y[:1], t[:1]
  assert agree((t1 - y1) ** 2, [np.sum((t1 - y1) ** 2)])


# ---------------------------------------------------------------- line 78: dy/dx versus grad_x C

def test_erratum_09_jacobian_dy_dx_is_not_the_gradient_of_C(net):
  params, x, t, wit, ours = net
  J = np.asarray(jacobian(lambda xx: reference.predict(params, xx))(jnp.asarray(x)))
  assert J.shape == (SIZES[-1], SIZES[0])
  assert fails(J, wit["dx"])  # dy/dx is (n_L, n_0); grad_x C is (n_0,)
  y = np.asarray(bpref.predict(params, x))
  assert agree(dC_dy(y, t) @ J, wit["dx"])  # grad_x C = (dC/dy)(dy/dx)
  assert agree(ours["dx"], wit["dx"])


# ---------------------------------------------------------------- (19), (21)-(22): chain rule for vector maps

def _maps(rng, n_x, n_h, n_g):
  A, Bm = rng.normal(size=(n_h, n_x)), rng.normal(size=(n_g, n_h))
  h = lambda v: jnp.tanh(jnp.asarray(A) @ v)
  g = lambda u: jnp.sin(jnp.asarray(Bm) @ u)
  return h, g


def test_erratum_10_eq19_order_of_jacobians():
  rng = np.random.default_rng(10)
  x = jnp.asarray(rng.normal(size=(4,)))
  h, g = _maps(rng, 4, 3, 2)
  Jh = np.asarray(jacobian(h)(x))  # (3, 4)
  Jg = np.asarray(jacobian(g)(h(x)))  # (2, 3)
  Jf = np.asarray(jacobian(lambda v: g(h(v)))(x))  # (2, 4)
  with pytest.raises(ValueError):
    Jh @ Jg  # literal (19): h'(x) g'(h(x))
  assert agree(Jg @ Jh, Jf)  # corrected: f'(x) = g'(h(x)) h'(x)
  assert agree(Jh.T @ Jg.T, Jf.T)  # the text's order is right for transposed Jacobians
  # Square maps: the literal product is defined but wrong.
  h, g = _maps(rng, 3, 3, 3)
  Jh = np.asarray(jacobian(h)(x[:3]))
  Jg = np.asarray(jacobian(g)(h(x[:3])))
  Jf = np.asarray(jacobian(lambda v: g(h(v)))(x[:3]))
  assert fails(Jh @ Jg, Jf) and agree(Jg @ Jh, Jf)
  # Scalar maps: the text is right.
  hs, gs = jnp.tanh, jnp.sin
  x0 = 0.7
  assert agree(jax.grad(hs)(x0) * jax.grad(gs)(hs(x0)), jax.grad(lambda v: gs(hs(v)))(x0))


def test_erratum_11_eq21_eq22_order_and_evaluation_points():
  rng = np.random.default_rng(11)
  x = jnp.asarray(rng.normal(size=(4,)))
  h2, h1 = _maps(rng, 4, 3, 5)
  C = jnp.asarray(rng.normal(size=(2, 5)))
  g = lambda u: jnp.cos(C @ u)
  J2 = np.asarray(jacobian(h2)(x))  # (3, 4)
  J1 = np.asarray(jacobian(h1)(h2(x)))  # (5, 3)
  Jg = np.asarray(jacobian(g)(h1(h2(x))))  # (2, 5)
  Jf = np.asarray(jacobian(lambda v: g(h1(h2(v))))(x))
  with pytest.raises(ValueError):
    J2 @ J1 @ Jg  # literal (21)
  assert agree(Jg @ J1 @ J2, Jf)  # corrected: g'(h_1(h_2(x))) h_1'(h_2(x)) h_2'(x)
  # (22) drops the evaluation points; evaluating every factor at x is wrong even for scalars.
  s2, s1, sg = jnp.tanh, jnp.sin, jnp.exp
  x0 = 0.9
  exact = jax.grad(lambda v: sg(s1(s2(v))))(x0)
  assert fails(jax.grad(s2)(x0) * jax.grad(s1)(x0) * jax.grad(sg)(x0), exact)
  assert agree(jax.grad(s2)(x0) * jax.grad(s1)(s2(x0)) * jax.grad(sg)(s1(s2(x0))), exact)
  # Linearity is sufficient, not necessary: (22) holds where x is fixed by both inner maps
  # (x = 0 for tanh and sin), and for a non-linear g whose derivative the inner maps preserve.
  dropped = lambda g_, f1, f2, v: jax.grad(f2)(v) * jax.grad(f1)(v) * jax.grad(g_)(v)
  assert agree(dropped(sg, s1, s2, 0.0), jax.grad(lambda v: sg(s1(s2(v))))(0.0))
  shift = lambda v: v + 2 * jnp.pi
  for v in rng.normal(size=3) * 3:
    assert agree(dropped(jnp.sin, shift, shift, v), jax.grad(lambda w: jnp.sin(shift(shift(w))))(v))
  lin2, lin1, ling = (lambda v: 3 * v - 1), (lambda v: -0.5 * v + 2), (lambda v: 7 * v)
  assert agree(dropped(ling, lin1, lin2, x0), jax.grad(lambda v: ling(lin1(lin2(v))))(x0))


# ---------------------------------------------------------------- (24), (27): f' is diag(f'); softmax is not diagonal

def test_erratum_12_eq24_da_dz_is_diag_fprime_and_not_diagonal_for_softmax(net):
  params, x, _, _, _ = net
  zs, _ = np_forward(params, x)
  for z, act in zip(zs, ACTS):
    jac = np.asarray(jacobian(bpref.activations.get(act).f)(jnp.asarray(z)))
    assert fails(DF[act](z), jac)  # literal (24): the vector f'(z)
    assert agree(np.diag(DF[act](z)), jac)  # corrected: diag f'(z)
    jac_bpref = jax.jit(bpref.activations.jacobian, static_argnums=0)(act, z, F[act](z))
    assert agree(np.asarray(jac_bpref), jac)
  z = np.array([0.3, -1.2, 0.8])
  a = np.exp(z) / np.sum(np.exp(z))
  jac = np.asarray(jacobian(bpref.activations.get("softmax").f)(jnp.asarray(z)))
  assert fails(np.diag(a * (1 - a)), jac)  # no diagonal matrix is the softmax Jacobian
  assert agree(np.diag(a) - np.outer(a, a), jac)
  assert agree(np.asarray(bpref.activations.jacobian("softmax", jnp.asarray(z), jnp.asarray(a))), jac)


def test_erratum_13_eq27_lambda_L_as_a_vector_loses_the_outputs(net):
  params, x, _, wit, ours = net
  Ws, _, _ = arrays(params)
  zs, _ = np_forward(params, x)
  lam_vec = DF[ACTS[-1]](zs[-1])  # literal (27): the vector f'_L(z_L)
  assert fails(lam_vec, wit["lambdas"][-1])
  literal_next = lam_vec @ Ws[-1]  # then (28) computes 1^T diag f'_L W_L: d(sum_k y_k)/da_{L-1}
  J = np.asarray(jacobian(lambda a: reference.predict(params[-1:], a))(
      jnp.asarray(np_forward(params, x)[1][-2])))
  assert agree(literal_next, np.ones(SIZES[-1]) @ J) and fails(literal_next, J)
  assert agree(np.diag(lam_vec), wit["lambdas"][-1])  # corrected (27): diag f'_L(z_L)
  assert agree(ours["lambdas"][-1], wit["lambdas"][-1])
  # Right when the network has one output (n_L = 1).
  one, x1, _ = make_net((3, 4, 1), ("tanh", "sin"), seed=13)
  z_last = np_forward(one, x1)[0][-1]
  assert agree(DF["sin"](z_last), np.asarray(reference.lambdas(one, x1)[-1]).reshape(1))


# ---------------------------------------------------------------- (28)/(30) and (35)/(37)

def test_erratum_14_eq30_lambda_recursion_needs_diag_in_that_position(net):
  params, x, _, wit, ours = net
  Ws, _, _ = arrays(params)
  zs, _ = np_forward(params, x)
  lams = corrected_lambdas(params, x)
  for l in range(len(params), 1, -1):  # l = L, ..., 2 gives lambda_{l-1}
    fp = DF[ACTS[l - 2]](zs[l - 2])
    literal = lams[l - 1] @ Ws[l - 1] @ fp  # (30) with the vector f'_{l-1}: shape (n_L,)
    assert fails(literal, wit["lambdas"][l - 2])
    with pytest.raises(ValueError):  # f' before W: (n_L, n_l) @ (n_{l-1}, n_{l-1})
      lams[l - 1] @ np.diag(fp) @ Ws[l - 1]
    assert agree(lams[l - 1] @ Ws[l - 1] @ np.diag(fp), wit["lambdas"][l - 2])  # corrected
    assert agree((lams[l - 1] @ Ws[l - 1]) * fp[None, :], wit["lambdas"][l - 2])  # column scaling
    assert agree(ours["lambdas"][l - 2], wit["lambdas"][l - 2])


def test_erratum_15_eq37_delta_recursion_with_vector_fprime_is_a_scalar(net):
  params, x, t, wit, ours = net
  Ws, _, _ = arrays(params)
  zs, _ = np_forward(params, x)
  ds = corrected_deltas(params, x, t)
  for l in range(len(params), 1, -1):
    fp = DF[ACTS[l - 2]](zs[l - 2])
    literal = ds[l - 1] @ Ws[l - 1] @ fp  # (37) as matrix products: a scalar
    assert np.ndim(literal) == 0 and fails(literal, wit["deltas"][l - 2])
    assert agree((ds[l - 1] @ Ws[l - 1]) * fp, wit["deltas"][l - 2])  # corrected: Hadamard / diag
    assert agree(ours["deltas"][l - 2], wit["deltas"][l - 2])


# ---------------------------------------------------------------- (31) and (38): wrong under any convention

def test_erratum_16_eq31_lambda_1_uses_W_2_and_f1_prime(net, square_net):
  params, x, _, wit, ours = net
  Ws, _, _ = arrays(params)
  zs, _ = np_forward(params, x)
  lam2 = corrected_lambdas(params, x)[1]
  with pytest.raises(ValueError):  # literal (31): lambda_2 W_1, (n_L, n_2) @ (n_1, n_0)
    lam2 @ Ws[0]
  corrected = lam2 @ Ws[1] @ np.diag(DF[ACTS[0]](zs[0]))  # lambda_1 = lambda_2 W_2 diag f'_1(z_1)
  assert agree(corrected, wit["lambdas"][0]) and agree(ours["lambdas"][0], wit["lambdas"][0])
  # With n_1 = n_2 the literal product is defined, has lambda_1's shape when n_0 = n_1, and is wrong.
  params, x, _, wit, ours = square_net
  Ws, _, _ = arrays(params)
  lam2 = corrected_lambdas(params, x)[1]
  literal = lam2 @ Ws[0]
  assert literal.shape == wit["lambdas"][0].shape and fails(literal, wit["lambdas"][0])
  assert agree(ours["lambdas"][0], wit["lambdas"][0])


def test_erratum_17_eq38_delta_1_uses_W_2_and_f1_prime(net, square_net):
  params, x, t, wit, ours = net
  Ws, _, _ = arrays(params)
  zs, _ = np_forward(params, x)
  d2 = corrected_deltas(params, x, t)[1]
  with pytest.raises(ValueError):  # literal (38): delta_2 W_1, (n_2,) @ (n_1, n_0)
    d2 @ Ws[0]
  corrected = (d2 @ Ws[1]) * DF[ACTS[0]](zs[0])  # delta_1 = delta_2 W_2 diag f'_1(z_1)
  assert agree(corrected, wit["deltas"][0]) and agree(ours["deltas"][0], wit["deltas"][0])
  params, x, t, wit, ours = square_net
  Ws, _, _ = arrays(params)
  d2 = corrected_deltas(params, x, t)[1]
  literal = d2 @ Ws[0]
  assert literal.shape == wit["deltas"][0].shape and fails(literal, wit["deltas"][0])
  # delta_2 W_1 is not even dC/dx (= delta_1 W_1), the product (38) may have been meant for.
  assert fails(literal, wit["dx"])
  assert agree(corrected_deltas(params, x, t)[0] @ Ws[0], wit["dx"])
  assert agree(ours["deltas"][0], wit["deltas"][0])


# ---------------------------------------------------------------- (26): the input gradient

def test_erratum_18_eq26_trailing_x_gives_a_directional_derivative(net):
  params, x, t, wit, ours = net
  Ws, _, acts = arrays(params)
  zs, a_s = np_forward(params, x)
  row = dC_dy(a_s[-1], t)
  for l in range(len(Ws), 0, -1):
    row = row @ np.diag(DF[acts[l - 1]](zs[l - 1])) @ Ws[l - 1]
  literal = row @ x  # (26) as printed ends in "W_1 x"
  assert np.ndim(literal) == 0 and fails(literal, wit["dx"])
  assert agree(literal, wit["dx"] @ x)  # it is the derivative along x, <grad_x C, x>
  assert agree(row, wit["dx"])  # corrected: dC/dx = dC/dy diag f'_L W_L ... diag f'_1 W_1
  assert agree(ours["dx"], wit["dx"])
  # With "f'" read as a vector and every "." a product, (26) is not even defined.
  with pytest.raises(ValueError):
    dC_dy(a_s[-1], t) @ DF[acts[-1]](zs[-1]) @ Ws[-1]
  # Right when n_0 = 1 and x = 1: <grad_x C, x> is then the 1 x 1 gradient itself.
  one, _, t1 = make_net((1, 3, 2), ("tanh", "sin"), seed=18)
  W1s, _, acts1 = arrays(one)
  for x_value, holds in ((1.0, True), (0.5, False)):
    x1 = np.array([x_value])
    zs1, as1 = np_forward(one, x1)
    row1 = dC_dy(as1[-1], t1)
    for l in range(len(W1s), 0, -1):
      row1 = row1 @ np.diag(DF[acts1[l - 1]](zs1[l - 1])) @ W1s[l - 1]
    literal1 = np.reshape(row1 @ x1, (1,))  # (26) as printed, a scalar
    wit1 = witness(one, x1, t1)["dx"]
    assert (agree(literal1, wit1) if holds else fails(literal1, wit1)), x_value


# ---------------------------------------------------------------- naming: delta versus lambda

def test_erratum_19_line112_the_quantity_named_delta_L_is_lambda_L(net):
  params, x, t, wit, ours = net
  zs, a_s = np_forward(params, x)
  lam_L, delta_L = wit["lambdas"][-1], wit["deltas"][-1]
  assert lam_L.shape == (SIZES[-1], SIZES[-1]) and delta_L.shape == (SIZES[-1],)
  assert fails(lam_L, delta_L)  # "f'_L ... we will call this value delta_L": it is lambda_L
  assert agree(dC_dy(a_s[-1], t) @ lam_L, delta_L)  # delta_L = (dC/dy) lambda_L (34)
  assert agree(ours["deltas"][-1], delta_L)


def test_erratum_20_before_eq32_factor_is_lambda_l_not_delta_l(net):
  params, x, t, wit, ours = net
  _, a_s = np_forward(params, x)
  for l in range(len(params)):
    assert agree(ours["lambdas"][l], wit["lambdas"][l])  # (32): dy/dz_l = lambda_l
    assert fails(wit["deltas"][l], wit["lambdas"][l])  # and not delta_l = dC/dz_l
    assert agree(dC_dy(a_s[-1], t) @ wit["lambdas"][l], wit["deltas"][l])


# ---------------------------------------------------------------- (33), (39): an outer product

def test_erratum_21_eq33_eq39_gradient_is_an_outer_product(net, square_net):
  for params, x, t, wit, ours in (net, square_net):
    _, a_s = np_forward(params, x)
    ds = corrected_deltas(params, x, t)
    for l in range(len(params)):
      n_l, n_prev = params[l].W.shape
      if n_l != n_prev:
        with pytest.raises(ValueError):  # literal delta_l a_{l-1}: (n_l,) @ (n_{l-1},)
          ds[l] @ a_s[l]
      else:
        assert np.ndim(ds[l] @ a_s[l]) == 0 and fails(ds[l] @ a_s[l], wit["dW"][l])
      assert agree(np.outer(ds[l], a_s[l]), wit["dW"][l])  # delta_l^T a_{l-1}^T, (n_l, n_{l-1})
      assert agree(ours["dW"][l], wit["dW"][l])
  # Right when n_l = 1 in the seed's numerator layout: dC/dW_l is then n_{l-1} x n_l, the
  # transpose of W_l's shape, and delta_l a_{l-1} (a 1 x 1 times a column) is that column.
  narrow, x3, t3 = make_net((3, 1), ("tanh",), seed=21)
  d3 = corrected_deltas(narrow, x3, t3)[0]  # shape (1,)
  numerator_layout = d3[0] * a_s_of(narrow, x3)[0]  # literal delta_1 a_0: a column of n_0 = 3
  dW3 = np.asarray(reference.grad(narrow, x3, t3, LOSS, "sum")[0].W)  # W's shape, (1, 3)
  assert numerator_layout.shape == (3,) and agree(numerator_layout[:, None], dW3.T)
  assert fails(numerator_layout[:, None], dW3)  # not in W's own shape (1, 3)
  wide, x4, t4 = make_net((3, 2), ("tanh",), seed=21)  # n_l = 2: no layout makes it right
  with pytest.raises(ValueError):
    corrected_deltas(wide, x4, t4)[0] @ a_s_of(wide, x4)[0]
  # Right when n_l = n_{l-1} = 1 in either layout: the outer product of 1-vectors is their product.
  one, x1, t1 = make_net((1, 1), ("tanh",), seed=21)
  d = corrected_deltas(one, x1, t1)[0]
  assert agree(np.reshape(d @ x1, (1, 1)), np.asarray(reference.grad(one, x1, t1, LOSS, "sum")[0].W))


def a_s_of(params, x):
  return np_forward(params, x)[1]


# ---------------------------------------------------------------- (34): delta_L, elementwise and softmax

def test_erratum_22_eq34_delta_L_is_a_vector_jacobian_product():
  params, x, t = make_net((3, 4, 3), ("tanh", "softmax"), seed=22)
  zs, a_s = np_forward_softmax(params, x)
  g = dC_dy(a_s[-1], t)
  wit = np.asarray(ref_deltas(params, x, t, LOSS, "sum")[-1])
  a = a_s[-1]
  assert np.ndim(g @ (a * (1 - a))) == 0  # literal (34), "dC/dy f'_L" as a product of vectors
  assert fails(g * a * (1 - a), wit)  # Hadamard with the elementwise softmax'(z) = a (1 - a)
  assert agree(g @ (np.diag(a) - np.outer(a, a)), wit)  # corrected: dC/dy (diag a - a a^T)
  assert agree(a * (g - g @ a), wit)
  assert agree(np.asarray(bp_deltas(params, x, t, LOSS, "sum")[-1]), wit)
  # Elementwise f_L: (34) is right with "." read as Hadamard.
  params, x, t = make_net((3, 4, 3), ("tanh", "sin"), seed=22)
  zs, a_s = np_forward(params, x)
  assert agree(dC_dy(a_s[-1], t) * np.cos(zs[-1]),
               np.asarray(ref_deltas(params, x, t, LOSS, "sum")[-1]))


def np_forward_softmax(params, x):
  Ws, _, acts = arrays(params)
  zs, a_s = [], [x]
  for W, act in zip(Ws, acts):
    z = W @ a_s[-1]
    zs.append(z)
    a_s.append(np.exp(z) / np.sum(np.exp(z)) if act == "softmax" else F[act](z))
  return zs, a_s


# ---------------------------------------------------------------- (25): correct, but "last" layer

def test_erratum_23_eq25_dz_da_is_W_l_of_the_previous_layer(net):
  params, x, _, _, _ = net
  _, a_s = np_forward(params, x)
  for l, layer in enumerate(params, start=1):
    jac = np.asarray(jacobian(lambda a: jnp.matmul(layer.W, a))(jnp.asarray(a_s[l - 1])))
    assert agree(jac, np.asarray(layer.W))  # dz_l/da_{l-1} = W_l, (n_l, n_{l-1})


# ---------------------------------------------------------------- line 47: "z_l - Inputs to layer l"

def test_erratum_27_the_input_of_layer_l_is_a_lminus1_and_z_l_its_preactivation(net):
  params, x, _, wit, ours = net
  _, a_s = np_forward(params, x)
  for l in range(1, len(params) + 1):
    J = np.asarray(jacobian(lambda a, l=l: reference.predict(params[l - 1:], a))(jnp.asarray(a_s[l - 1])))
    assert fails(J, wit["lambdas"][l - 1])  # dy/d(input of layer l) is not dy/dz_l
    assert agree(ours["lambdas"][l - 1] @ np.asarray(params[l - 1].W), J)  # = lambda_l W_l
