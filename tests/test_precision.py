"""Matmul precision: every product in bpref carries the configured precision, and its rounding model.

The configuration is read where XLA receives it: the precision attribute of every
``stablehlo.dot_general`` in the lowered program. Each check runs under an ambient
``jax.default_matmul_precision`` different from the configured one, so a product
that left its precision implicit would show the ambient level and fail.
"""

from __future__ import annotations

import ast
import pathlib
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import bpref
from bpref import tolerance
from bpref.error import worst_error
from bpref.problems import problem_tolerance
from bpref.witnesses import autodiff as reference

HIGHEST, HIGH, DEFAULT = jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGH, jax.lax.Precision.DEFAULT
DOT = re.compile(r"stablehlo\.dot(_general)?\b")
PRECISION_ATTR = re.compile(r"precision = \[(\w+), (\w+)\]")
DEPTH = 3


def _problem():
  rng = np.random.default_rng(3)
  sizes = (4, 5, 3, 2)
  weights = [rng.normal(size=(sizes[l + 1], sizes[l])) for l in range(DEPTH)]
  biases = [rng.normal(size=(sizes[l + 1],)) for l in range(DEPTH)]
  params = bpref.from_arrays(weights, biases, ("tanh", "relu", "softmax"))
  x = jnp.asarray(rng.normal(size=(6, 4)))
  t = jnp.asarray(rng.dirichlet(np.ones(2), size=6))
  return params, x, t


# (name, function, arguments after (params, x, t)): bpref's public functions and the witness.
LOSS = "cross_entropy"
FUNCTIONS = (
    [(f"bpref.{name}", getattr(bpref, name), (LOSS, "mean"))
     for name in ("value_and_grad", "grad", "deltas", "input_grad", "loss_value")] +
    [("bpref.per_example_grads", bpref.per_example_grads, (LOSS,))] +
    [(f"bpref.{name}", getattr(bpref, name), None) for name in ("forward", "predict", "lambdas")] +
    [(f"reference.{name}", getattr(reference, name), (LOSS, "sum"))
     for name in ("value_and_grad", "grad", "deltas", "input_grad")] +
    [("reference.per_example_grads", reference.per_example_grads, (LOSS,))] +
    [(f"reference.{name}", getattr(reference, name), None) for name in ("predict", "lambdas")])


def _lowered_text(fn, rest, **kwargs) -> str:
  params, x, t = _problem()
  if rest is None:
    return jax.jit(lambda p, x: fn(p, x, **kwargs)).lower(params, x).as_text()
  return jax.jit(lambda p, x, t: fn(p, x, t, *rest, **kwargs)).lower(params, x, t).as_text()


def _dot_precisions(text: str) -> list:
  """The precision attribute of every dot in a StableHLO module; None where it has none."""
  out = []
  for line in text.splitlines():
    if DOT.search(line):
      found = PRECISION_ATTR.search(line)
      out.append(found.groups() if found else None)
  return out


@pytest.mark.parametrize("configured, ambient", [(HIGHEST, "bfloat16"), (DEFAULT, "float32")])
def test_every_dot_general_carries_the_configured_precision(configured, ambient):
  with jax.default_matmul_precision(ambient):
    for name, fn, rest in FUNCTIONS:
      dots = _dot_precisions(_lowered_text(fn, rest, precision=configured))
      assert len(dots) >= DEPTH, f"{name}: only {len(dots)} dot_general ops for {DEPTH} layers"
      want = (configured.name, configured.name)
      wrong = [d for d in dots if d != want]
      assert not wrong, (f"{name} with precision={configured.name} under ambient {ambient!r}: "
                         f"dot_general precisions {wrong}, expected {list(want)}")


def test_precision_defaults_to_highest_whatever_the_ambient_setting():
  assert bpref.DEFAULT_PRECISION == HIGHEST
  with jax.default_matmul_precision("bfloat16"):
    for name, fn, rest in FUNCTIONS:
      dots = _dot_precisions(_lowered_text(fn, rest))
      assert dots and all(d == ("HIGHEST", "HIGHEST") for d in dots), f"{name}: {dots}"


_MATMULS = {"matmul", "dot", "einsum", "tensordot", "inner", "vdot", "dot_general", "batch_matmul",
            "multi_dot", "conv_general_dilated"}


def _jax_aliases(tree) -> set:
  """Local names bound to jax.numpy, jax.lax or jax.numpy.linalg in a module."""
  names = {"jax"}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.startswith("jax"):
          names.add(alias.asname or alias.name.split(".")[0])
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jax"):
      for alias in node.names:
        names.add(alias.asname or alias.name)
  return names


def _root(expr) -> str | None:
  while isinstance(expr, ast.Attribute):
    expr = expr.value
  return expr.id if isinstance(expr, ast.Name) else None


def test_every_jax_matmul_in_the_source_passes_precision():
  """Static check over bpref/: a jnp/lax product without precision= uses the ambient default."""
  missing = []
  for path in sorted(pathlib.Path(bpref.__file__).parent.rglob("*.py")):
    tree = ast.parse(path.read_text(), filename=str(path))
    jax_names = _jax_aliases(tree)
    for node in ast.walk(tree):
      if not isinstance(node, ast.Call):
        continue
      func = node.func
      attr = func.attr if isinstance(func, ast.Attribute) else None
      if attr in _MATMULS and _root(func) in jax_names:
        if not any(k.arg == "precision" for k in node.keywords):
          missing.append(f"{path.name}:{node.lineno} {ast.unparse(func)}")
  assert not missing, "JAX matmuls without an explicit precision=: " + ", ".join(missing)


# ---------------------------------------------------------------- the rounding model

U32 = tolerance.unit_roundoff(np.float32)
U64 = tolerance.unit_roundoff(np.float64)
U_BF16 = float(ml_dtypes.finfo(ml_dtypes.bfloat16).eps) / 2  # 7 fraction bits
EPS_TF32 = float(np.finfo(np.float16).eps)  # TF32 keeps float16's 10 fraction bits


def test_unit_roundoff_follows_the_formats_of_each_backend():
  u = tolerance.precision_unit_roundoff
  for backend in ("cpu", "gpu", "cuda", "rocm", "tpu"):
    assert u(np.float64, DEFAULT, backend) == U64
    assert u(ml_dtypes.bfloat16, DEFAULT, backend) == U_BF16
    assert u(np.float16, HIGH, backend) == float(np.finfo(np.float16).eps) / 2
  for level in (DEFAULT, HIGH, HIGHEST):
    assert u(np.float32, level, "cpu") == U32  # XLA:CPU ignores the setting
  assert u(np.float32, HIGHEST, "gpu") == U32
  # TF32: 2^-11 when rounded to nearest, up to 2^-10 = eps(TF32) when truncated; the bound takes eps.
  assert u(np.float32, DEFAULT, "gpu") == u(np.float32, HIGH, "cuda") == EPS_TF32
  assert u(np.float32, DEFAULT, "tpu") == U_BF16
  # k bfloat16 parts hold about 8k bits; the dropped products cost at most 2 u_bf16^k.
  assert u(np.float32, HIGH, "tpu") == 2 * U_BF16 ** 2
  assert u(np.float32, HIGHEST, "tpu") == 2 * U_BF16 ** 3
  assert U32 < u(np.float32, HIGHEST, "tpu") < u(np.float32, HIGH, "tpu") < u(np.float32, DEFAULT, "tpu")


def test_precision_argument_forms():
  u = tolerance.precision_unit_roundoff
  assert u(np.float32, "highest", "gpu") == u(np.float32, "float32", "gpu") == U32
  assert u(np.float32, "tensorfloat32", "gpu") == EPS_TF32
  assert u(np.float32, (HIGHEST, DEFAULT), "tpu") == U_BF16  # the less precise operand counts
  with jax.default_matmul_precision("float32"):
    assert u(np.float32, None, "gpu") == U32  # None means JAX's configured default
  with jax.default_matmul_precision("bfloat16"):
    assert u(np.float32, None, "tpu") == U_BF16
  assert u(np.float32, None, "tpu") == U_BF16  # unset: DEFAULT
  # The defaults: bpref's precision (HIGHEST) on the backend JAX runs on.
  assert u(np.float32) == u(np.float32, HIGHEST, jax.default_backend())
  assert tolerance.tolerance_factor(np.float32, DEFAULT, "gpu") == EPS_TF32 / U32
  assert tolerance.tolerance_factor(np.float64, DEFAULT, "tpu") == 1.0
  with pytest.raises(ValueError, match="unknown backend 'metal'"):
    u(np.float32, HIGHEST, "metal")
  with pytest.raises(ValueError, match="unknown precision 'fast'"):
    u(np.float32, "fast", "gpu")
  with pytest.raises(TypeError, match="precision must be a jax.lax.Precision"):
    u(np.float32, 3, "gpu")


def _inner_product_bound(a, b, u):
  # |fl(A B) - A B| <= gamma_k |A| |B| (Higham, eq. 3.13), gamma_k = k u / (1 - k u), k = inner size.
  k = a.shape[1]
  return k * u / (1 - k * u) * (np.abs(a) @ np.abs(b))


def test_cpu_float32_products_obey_the_float32_model_at_every_setting():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(16, 64)).astype(np.float32)
  b = rng.normal(size=(64, 8)).astype(np.float32)
  exact = a.astype(np.float64) @ b.astype(np.float64)
  cpu = jax.devices("cpu")[0]
  bound = None
  for level in (DEFAULT, HIGH, HIGHEST):
    product = jax.jit(lambda a, b: jnp.matmul(a, b, precision=level))
    got = np.asarray(product(jax.device_put(a, cpu), jax.device_put(b, cpu)), np.float64)
    if bound is None:
      bound = _inner_product_bound(a, b, tolerance.precision_unit_roundoff(np.float32, level, "cpu"))
    assert np.all(np.abs(got - exact) <= bound), f"CPU float32 product at {level.name} exceeds gamma_k"


def _truncate_to_tf32(a):
  # Keep sign, exponent and the top 10 fraction bits of each float32: the low 13 bits are cleared.
  bits = np.asarray(a, np.float32).view(np.uint32) & np.uint32(0xFFFFE000)
  return bits.view(np.float32)


def test_truncated_tf32_needs_the_larger_unit_roundoff():
  # x = y = the largest float32 below 1 + 2^-10 truncate to 1: the product loses almost 2 * 2^-10.
  x = np.nextafter(np.float32(1 + 2.0 ** -10), np.float32(0))
  xt = _truncate_to_tf32(x)
  assert xt == 1.0
  exact = float(x) * float(x)
  error = abs(float(xt) * float(xt) - exact) / exact
  two_operands = lambda u: 2 * u + u * u  # noqa: E731  (1 + d_a)(1 + d_b) - 1 with |d| <= u
  assert error > two_operands(2.0 ** -11), "round-to-nearest's u would not cover truncation"
  assert error <= two_operands(tolerance.precision_unit_roundoff(np.float32, DEFAULT, "gpu"))
  # A whole product with truncated operands stays within gamma_k plus the operand errors at that u.
  rng = np.random.default_rng(1)
  a = rng.normal(size=(16, 64)).astype(np.float32)
  b = rng.normal(size=(64, 8)).astype(np.float32)
  got = _truncate_to_tf32(a).astype(np.float64) @ _truncate_to_tf32(b).astype(np.float64)
  exact = a.astype(np.float64) @ b.astype(np.float64)
  u_t = tolerance.precision_unit_roundoff(np.float32, DEFAULT, "gpu")
  assert np.all(np.abs(got - exact) <= two_operands(u_t) * (np.abs(a) @ np.abs(b)))
  assert np.max(np.abs(got - exact) / (np.abs(a) @ np.abs(b))) > 64 * U32  # beyond float32's gamma_k


_TF32_ACTS = {  # f and f' (from z) in the dtype of z
    "identity": (lambda z: z, lambda z: np.ones_like(z)),
    "tanh": (np.tanh, lambda z: 1 - np.tanh(z) ** 2),
    "sigmoid": (lambda z: 1 / (1 + np.exp(-z)), lambda z: np.exp(-z) / (1 + np.exp(-z)) ** 2),
    "relu": (lambda z: np.maximum(z, 0), lambda z: (z > 0).astype(z.dtype)),
}


def _textbook_grads(Ws, bs, acts, x, t, matmul):
  """dC/dW_l, dC/db_l of C = sum (y - t)^2 / (2 B), every product through ``matmul``."""
  a, tape = x, []
  for W, b, act in zip(Ws, bs, acts):
    z = matmul(a, W.T) + b
    tape.append((a, z))
    a = _TF32_ACTS[act][0](z)
  delta = (a - t) / x.shape[0] * _TF32_ACTS[acts[-1]][1](tape[-1][1])
  grads = []
  for l in reversed(range(len(Ws))):
    grads.append((matmul(delta.T, tape[l][0]), delta.sum(0)))
    if l:
      delta = matmul(delta, Ws[l]) * _TF32_ACTS[acts[l - 1]][1](tape[l - 1][1])
  return grads[::-1]


def test_emulated_tf32_networks_stay_within_the_split_model():
  # Every float32 product of a textbook backprop takes truncated TF32 operands (the worse of the
  # two roundings the model allows) and sums in float32; its gradients, against the same code in
  # float64, stay within (T') of bpref.tolerance, while plain float32 products stay within (T).
  rng = np.random.default_rng(5)
  tf32 = lambda a, b: _truncate_to_tf32(a) @ _truncate_to_tf32(b)  # noqa: E731
  ratios, visible = [], 0
  for case in range(40):
    depth = int(rng.integers(1, 5))
    sizes = [int(rng.choice([1, 3, 8, 32, 64])) for _ in range(depth + 1)]
    acts = [str(rng.choice(list(_TF32_ACTS))) for _ in range(depth)]
    B = int(rng.choice([1, 4, 32]))
    Ws = [rng.normal(size=(m, n)) / np.sqrt(n) for n, m in zip(sizes, sizes[1:])]
    bs = [rng.normal(size=m) * 0.1 for m in sizes[1:]]
    x, t = rng.normal(size=(B, sizes[0])), rng.normal(size=(B, sizes[-1]))
    f32 = lambda arrays: [np.asarray(a, np.float32) for a in arrays]  # noqa: E731
    exact = _textbook_grads(Ws, bs, acts, x, t, np.matmul)
    got = _textbook_grads(f32(Ws), f32(bs), acts, np.float32(x), np.float32(t), tf32)
    plain = _textbook_grads(f32(Ws), f32(bs), acts, np.float32(x), np.float32(t), np.matmul)
    params = bpref.from_arrays(f32(Ws), f32(bs), tuple(acts))
    tol_tf32 = problem_tolerance(params, np.float32(x), precision=DEFAULT, backend="gpu")
    tol_f32 = problem_tolerance(params, np.float32(x))
    err = worst_error(got, exact)
    assert worst_error(plain, exact) <= tol_f32, (case, sizes, acts)
    assert err <= tol_tf32, (case, sizes, acts, err, tol_tf32)
    ratios.append(err / tol_tf32)
    visible += err > tol_f32
  assert visible >= 10, f"TF32 rounding shows beyond float32's (T) on only {visible} of 40 networks"
  assert max(ratios) > 1e-3, "every network is far inside (T'): the emulation rounds nothing"
