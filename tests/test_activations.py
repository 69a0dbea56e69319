"""Each activation's handwritten f' against jax.grad of f, against mpmath, and f against jax.nn."""

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest

from bpref import activations as A
from bpref.tolerance import unit_roundoff

ELEMENTWISE = [n for n, act in A.ACTIVATIONS.items() if act.elementwise]

# Wide range, both signs, the kinks and the extremes |z| = 1e3; no subnormals.
GRID = np.concatenate([
    -np.logspace(-6, 3, 60), [0.0], np.logspace(-6, 3, 60),
    np.linspace(-6, 6, 49),
])

JAX_NN = {
    "identity": lambda z: z,
    "relu": jax.nn.relu,
    "leaky_relu": jax.nn.leaky_relu,
    "elu": jax.nn.elu,
    "selu": jax.nn.selu,
    "gelu": lambda z: jax.nn.gelu(z, approximate=False),
    "gelu_tanh": lambda z: jax.nn.gelu(z, approximate=True),
    "silu": jax.nn.silu,
    "mish": jax.nn.mish,
    "softplus": jax.nn.softplus,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "softsign": jax.nn.soft_sign,
    "sin": jnp.sin,
}

mpmath.mp.dps = 50
_PHI = lambda z: mpmath.ncdf(z)  # noqa: E731
_phi = lambda z: mpmath.npdf(z)  # noqa: E731
_sig = lambda z: 1 / (1 + mpmath.exp(-z))  # noqa: E731
_GC, _GK = mpmath.sqrt(2 / mpmath.pi), mpmath.mpf("0.044715")


def _gelu_tanh_terms(z):
  u2 = 2 * _GC * (z + _GK * z ** 3)
  return [_sig(u2), z * _sig(u2) * (1 - _sig(u2)) * 2 * _GC * (1 + 3 * _GK * z * z)]


# The exact derivative as a list of terms; the tolerance scales with the sum of their magnitudes,
# which is the size of the rounding error of any evaluation that adds them.
EXACT_PRIME_TERMS = {
    "identity": lambda z: [mpmath.mpf(1)],
    "relu": lambda z: [mpmath.mpf(1 if z > 0 else 0)],
    "leaky_relu": lambda z: [mpmath.mpf(1) if z >= 0 else mpmath.mpf("0.01")],
    "elu": lambda z: [mpmath.mpf(1) if z > 0 else mpmath.exp(z)],
    "selu": lambda z: [A.SELU_SCALE * (mpmath.mpf(1) if z > 0 else A.SELU_ALPHA * mpmath.exp(z))],
    "gelu": lambda z: [_PHI(z), z * _phi(z)],
    "gelu_tanh": _gelu_tanh_terms,
    "silu": lambda z: [_sig(z), z * _sig(z) * (1 - _sig(z))],
    "mish": lambda z: [mpmath.tanh(mpmath.log1p(mpmath.exp(z))),
                       z * mpmath.sech(mpmath.log1p(mpmath.exp(z))) ** 2 * _sig(z)],
    "softplus": lambda z: [_sig(z)],
    "sigmoid": lambda z: [_sig(z) * _sig(-z)],
    "tanh": lambda z: [mpmath.sech(z) ** 2],
    "softsign": lambda z: [1 / (1 + abs(z)) ** 2],
    "sin": lambda z: [mpmath.cos(z)],
}

# gelu and gelu_tanh compute the argument of exp (z^2 / 2, resp. 2c(z + k z^3)) in floating point:
# its rounding, relative u, becomes a relative error |argument| u of exp. The other exponents
# (-|z|, -2|z|) are exact.
EXP_ARGUMENT = {
    "gelu": lambda z: z * z / 2,
    "gelu_tanh": lambda z: abs(2 * float(_GC) * (z + 0.044715 * z ** 3)),
}

# Operations on the longest path of a derivative formula; each adds at most u of relative error,
# exp and erfc amplify relative error by |z| in their argument (a few ulps for |z| <= 1e3).
FORMULA_ULPS = 64


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_activation_derivative_matches_jax_grad(name):
  act = A.get(name)
  # At a kink jax.grad of a where/minimum form returns whichever branch it traces (0.5 for a tie
  # in minimum); the convention there is checked against jax.nn in test_kink_conventions_follow_jax_nn.
  z = jnp.asarray(GRID[GRID != 0] if name in A.KINKED else GRID)
  ours = act.df(z)
  theirs = jax.vmap(jax.grad(act.f))(z)
  # f' is O(1) or smaller for every activation here; jax's own forms (1 - tanh^2, ...) lose relative
  # accuracy in the tails, so compare in absolute terms at the scale of max |f'|.
  scale = float(jnp.max(jnp.abs(theirs)))
  np.testing.assert_array_less(np.abs(np.asarray(ours - theirs)), FORMULA_ULPS * 2 ** -53 * scale + 1e-300)
  assert np.all(np.isfinite(np.asarray(ours)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_activation_derivative_is_accurate_to_mpmath(name, dtype):
  u = unit_roundoff(dtype)
  grid = GRID if dtype == np.float64 else GRID[np.abs(GRID) <= 80]  # float32 tails underflow to 0
  z = jnp.asarray(grid.astype(dtype))
  ours = np.asarray(A.get(name).df(z), np.float64)
  for zi, oi in zip(np.asarray(z, np.float64), ours):
    if name in ("relu", "leaky_relu", "elu", "selu") and zi == 0:
      continue  # the kink: its convention is tested separately
    terms = EXACT_PRIME_TERMS[name](mpmath.mpf(float(zi)))
    exact = float(sum(terms))
    size = float(sum(abs(t) for t in terms))
    # sin': cos of a large argument carries the argument's own rounding, |z| u.
    size += abs(float(zi)) if name == "sin" else 0.0
    size *= 1 + EXP_ARGUMENT.get(name, lambda z: 0.0)(float(zi))
    tiny = float(np.finfo(dtype).tiny)
    assert abs(oi - exact) <= FORMULA_ULPS * u * size + tiny, (name, zi, oi, exact)


POSITIVE_PRIME = {  # f'(z) > 0 for every real z, in closed forms written for mpmath
    "tanh": lambda z: 1 / mpmath.cosh(z) ** 2,
    "sigmoid": lambda z: mpmath.exp(-z) / (1 + mpmath.exp(-z)) ** 2,
    "softplus": lambda z: 1 / (1 + mpmath.exp(-z)),
    "softsign": lambda z: 1 / (1 + abs(z)) ** 2,
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", sorted(POSITIVE_PRIME))
def test_saturated_tails_keep_their_relative_accuracy(name, dtype):
  """Where f' is positive and its exact value a normal number, f' is that value to a few ulps.

  A form such as 1 - tanh(z)^2 or sigma (1 - sigma) is right near 0 and 0 once tanh(z) or
  sigma(z) rounds to 1 (|z| about 19 and 37 in float64): a saturated unit then passes no
  gradient at all, where its exact f' is a normal number.
  """
  u, tiny = unit_roundoff(dtype), float(np.finfo(dtype).tiny)
  mpmath.mp.dps = 50
  zs = [s * m for m in (5.0, 10.0, 20.0, 30.0, 40.0, 80.0, 150.0, 300.0) for s in (1.0, -1.0)]
  checked = 0
  for zi in zs:
    exact = POSITIVE_PRIME[name](mpmath.mpf(zi))
    if exact < 2 * tiny:  # below the normal range f' may underflow: nothing to hold it to
      continue
    ours = float(A.get(name).df(jnp.asarray(zi, dtype)))
    assert ours > 0 and abs(ours - float(exact)) <= FORMULA_ULPS * u * float(exact), (zi, ours, exact)
    checked += 1
  assert checked >= 6  # each activation has saturated points with a normal f' in both dtypes


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_activation_matches_jax_nn(name):
  z = jnp.asarray(GRID)
  ours = np.asarray(A.get(name).f(z))
  theirs = np.asarray(JAX_NN[name](z))
  # jax.nn.gelu(approximate=True) forms z (1 + tanh u) / 2, whose cancellation for z < 0 leaves an
  # absolute error of order |z| u; bpref's z sigma(2u) has none. Elsewhere both are accurate to ulps.
  atol = FORMULA_ULPS * 2 ** -53 * np.abs(np.asarray(z)) if name == "gelu_tanh" else 1e-300
  bound = FORMULA_ULPS * 2 ** -53 * np.abs(theirs) + atol
  np.testing.assert_array_less(np.abs(ours - theirs), bound + 1e-300)


def test_kink_conventions_follow_jax_nn():
  zero = jnp.zeros(())
  for name in ("relu", "leaky_relu", "elu", "selu"):
    assert float(A.get(name).df(zero)) == float(jax.grad(JAX_NN[name])(zero)), name
  assert float(A.get("relu").df(zero)) == 0.0
  assert float(A.get("leaky_relu").df(zero)) == 1.0


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_activations_are_finite_at_the_extremes(name):
  for dtype in (jnp.float32, jnp.float64):
    z = jnp.asarray([-1e3, -50.0, 50.0, 1e3], dtype)
    assert np.all(np.isfinite(np.asarray(A.get(name).f(z)))), name
    assert np.all(np.isfinite(np.asarray(A.get(name).df(z)))), name


def test_softmax_vjp_and_jacobian_match_jax():
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.normal(size=(4, 5)) * 3)
  g = jnp.asarray(rng.normal(size=(4, 5)))
  a = A.get("softmax").f(z)
  np.testing.assert_allclose(np.asarray(a), np.asarray(jax.nn.softmax(z)), rtol=1e-14)
  jac = jax.vmap(jax.jacobian(jax.nn.softmax))(z)
  np.testing.assert_allclose(np.asarray(A.jacobian("softmax", z, a)), np.asarray(jac), atol=1e-15)
  vjp = jnp.einsum("bk,bkj->bj", g, jac)
  np.testing.assert_allclose(np.asarray(A.vjp("softmax", z, a, g)), np.asarray(vjp), atol=1e-14)


def test_softmax_is_finite_for_huge_logits():
  z = jnp.asarray([[1e3, -1e3, 0.0], [-1e3, -1e3, -1e3]])
  a = A.get("softmax").f(z)
  assert np.all(np.isfinite(np.asarray(a)))
  np.testing.assert_allclose(np.asarray(jnp.sum(a, axis=-1)), 1.0, rtol=1e-15)


def test_unknown_activation_lists_valid_names():
  with pytest.raises(ValueError, match="valid names: identity, relu"):
    A.get("rellu")


def _route_grid(dtype):
  """Both exact kinks 0.0 and -0.0, the smallest normal numbers, tiny, moderate and large |z|."""
  tiny = float(np.finfo(dtype).tiny)
  small = [tiny, 2 * tiny, 1e-30, 1e-12, 1e-6] + ([1e-300] if dtype == np.float64 else [])
  big = np.concatenate([np.logspace(-3, 3, 25), [1 - 2 ** -20, 1.0, 1 + 2 ** -20, 1e3]])
  positive = np.concatenate([small, big])
  return np.concatenate([[0.0, -0.0], positive, -positive]).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_both_derivative_routes_agree_everywhere_kinks_included(name, dtype):
  """f'(z) from a (``derivative``, which the backward pass uses) and from z (``df``) agree bit for bit.

  ``derivative`` takes f' from a = f(z) where the activation gives ``df_out`` (identity, relu);
  a df_out that disagreed with df anywhere, such as relu'(0) = 1 from a >= 0, would give the
  backward pass a second kink convention.
  """
  z = jnp.asarray(_route_grid(dtype))
  assert np.any(np.signbit(np.asarray(z)) & (np.asarray(z) == 0)), "the grid lost -0.0"
  act = A.get(name)
  a = act.f(z)
  from_z = np.asarray(act.df(z))
  from_a = np.asarray(A.derivative(name, z, a))
  assert from_a.dtype == from_z.dtype == np.dtype(dtype)
  assert np.all(np.isfinite(from_z)), name
  mismatch = from_a != from_z
  np.testing.assert_array_equal(from_a, from_z, err_msg=f"{name} at z = {np.asarray(z)[mismatch]}")
  # the elementwise VJP of the backward pass carries the same f'
  g = jnp.ones_like(z)
  np.testing.assert_array_equal(np.asarray(A.vjp(name, z, a, g)), from_z)


# ---------------------------------------------------------------- NaN stays NaN (issue 28)
# Every field of an Activation record that holds a function of z or a, and how it is evaluated
# at the NaN inputs; a field added to the record must be sorted here or excused below.
_NAN_FORMS = {
    "f": lambda act, z, a: act.f(z),
    "df": lambda act, z, a: act.df(z),
    "df_out": lambda act, z, a: act.df_out(a),
    "d2f": lambda act, z, a: act.d2f(z, a),
}
_NOT_FUNCTIONS = {"name", "elementwise", "kink", "piecewise_linear"}
_NANS = [np.nan, -np.nan]  # both signs of NaN
CONSTANT_PRIME = {"identity"}
"""Activations whose f' is a constant, NaN or not (torch's identity too)."""


def test_every_function_field_of_an_activation_is_checked_at_nan():
  assert set(A.Activation._fields) == set(_NAN_FORMS) | _NOT_FUNCTIONS


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(A.ACTIVATIONS))
def test_nan_stays_nan_in_f_and_every_derivative_form(name, dtype):
  """f(NaN), f'(NaN), f' from a = f(NaN) and f''(NaN) are NaN (IEEE,
  torch.relu(nan) = nan): a NaN in x must reach the loss and the gradients, not vanish at a kink."""
  act = A.get(name)
  if not act.elementwise:  # softmax: a row holding a NaN is NaN wherever it feeds (f, vjp, jacobian)
    z = jnp.asarray([[np.nan, 1.0, -2.0], [-np.nan, 0.0, 3.0]], dtype)
    a = act.f(z)
    assert np.all(np.isnan(np.asarray(a))), name
    assert np.all(np.isnan(np.asarray(A.vjp(name, z, a, jnp.ones_like(z))))), name
    assert np.all(np.isnan(np.asarray(A.jacobian(name, z, a))[:, 0, 0])), name
    return
  z = jnp.asarray(_NANS, dtype)
  a = act.f(z)
  assert np.all(np.isnan(np.asarray(a))), name
  if name in CONSTANT_PRIME:  # f' = 1 everywhere: the NaN travels in the cotangent instead
    g = jnp.asarray([np.nan, 1.0], dtype)
    np.testing.assert_array_equal(np.asarray(act.df(z)), [1.0, 1.0])
    assert np.isnan(np.asarray(A.vjp(name, z, a, g))).tolist() == [True, False]
    return
  for field, form in _NAN_FORMS.items():
    if getattr(act, field) is None:
      continue
    out = np.asarray(form(act, z, a))
    assert out.shape == z.shape and np.all(np.isnan(out)), (name, field, out)
    assert out.dtype == np.dtype(dtype), (name, field, out.dtype)
  # what the backward pass uses: f' from whichever route, and the elementwise VJP
  assert np.all(np.isnan(np.asarray(A.derivative(name, z, a)))), name
  assert np.all(np.isnan(np.asarray(A.vjp(name, z, a, jnp.ones_like(z))))), name
  assert np.all(np.isnan(np.asarray(A.jacobian(name, z[None], a[None])[0].diagonal()))), name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_handling_leaves_the_kinks_and_signed_zeros_alone(dtype):
  """Beside a NaN, finite inputs keep their values: relu(-0) = +0, relu'(+-0) = 0, leaky_relu'(0) = 1."""
  z = jnp.asarray([np.nan, -0.0, 0.0, -1.5, 2.5], dtype)
  relu, leaky, ident = A.get("relu"), A.get("leaky_relu"), A.get("identity")
  a = relu.f(z)
  got = np.asarray(a)[1:]
  np.testing.assert_array_equal(got, [0.0, 0.0, 0.0, 2.5])
  assert not np.any(np.signbit(got[:3])), got  # relu(-0) = +0, as before
  np.testing.assert_array_equal(np.asarray(relu.df(z))[1:], [0.0, 0.0, 0.0, 1.0])
  np.testing.assert_array_equal(np.asarray(relu.df_out(a))[1:], [0.0, 0.0, 0.0, 1.0])
  np.testing.assert_array_equal(np.asarray(leaky.df(z))[1:], np.asarray([1.0, 1.0, 0.01, 1.0], dtype))
  np.testing.assert_array_equal(np.asarray(ident.df(z))[1:], [1.0, 1.0, 1.0, 1.0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("acts", [("relu", "identity"), ("relu", "relu", "softmax")])
def test_nan_in_x_makes_the_loss_and_every_gradient_nan(acts, dtype):
  """Issue 28: a relu network with one NaN in x gave a finite loss (relu mapped NaN to 0)."""
  import bpref

  sizes = (3, 8, 2) if len(acts) == 2 else (3, 6, 5, 4)
  params = bpref.init(jax.random.key(0), sizes, acts, dtype=dtype)
  x = jnp.ones((4, 3), dtype).at[1, 2].set(np.nan)
  loss = "squared_error" if acts[-1] == "identity" else "cross_entropy"
  t = jnp.zeros((4, sizes[-1]), dtype).at[:, 0].set(1)
  value, grads = bpref.value_and_grad(params, x, t, loss=loss, reduction="mean")
  assert np.isnan(float(value)), value
  for l, layer in enumerate(grads):
    assert np.all(np.isnan(np.asarray(layer.W))), (l, layer.W)
    assert np.all(np.isnan(np.asarray(layer.b))), (l, layer.b)
  # the same network on the finite x is finite: the NaN, not the network, makes the NaN
  value, grads = bpref.value_and_grad(params, jnp.ones((4, 3), dtype), t, loss=loss, reduction="mean")
  assert np.isfinite(float(value)) and all(np.all(np.isfinite(np.asarray(g.W))) for g in grads)


def test_the_independent_witnesses_keep_nan_too():
  """The referee's mpmath twins and the complex step's forms of f are NaN at NaN as well, so
  they do not certify a finite 'truth' where bpref gives NaN."""
  from bpref.witnesses import finite_diff, referee

  nan = mpmath.mpf("nan")
  for name, (f, df) in referee._SCALAR.items():
    assert mpmath.isnan(f(nan)) and mpmath.isnan(df(nan)), name
  z = jnp.asarray([complex(np.nan, 1e-20), complex(-np.nan, 0.0)])
  for name, f in finite_diff.COMPLEX_ACTIVATIONS.items():
    out = np.asarray(f(z[None]) if name == "softmax" else f(z))
    assert np.all(np.isnan(out.real)), (name, out)
