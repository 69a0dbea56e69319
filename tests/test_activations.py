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
