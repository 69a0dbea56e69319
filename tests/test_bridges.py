"""Bridges: PyTorch, Flax and Equinox models to bpref and back, and their autodiff candidates.

Each framework's tests need that framework (``pip install 'bpref[bridges]'``) and are
skipped only when it is not installed. Gradient comparisons use the dtype's normwise
bound from ``bpref.tolerance`` against bpref in float64.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bpref
from bpref import tolerance
from bpref.bridges import Architecture, check_arrays
from bpref.error import normwise_error
from bpref.testing import problems

TOL64 = tolerance.gradient_tolerance(np.float64)
TOL32 = tolerance.gradient_tolerance(np.float32)


def _arrays(params):
  return ([np.asarray(p.W) for p in params], [None if p.b is None else np.asarray(p.b) for p in params],
          [p.activation for p in params])


@functools.partial(jax.jit, static_argnums=(3, 4))
def _bpref_grad(params, x, t, loss, reduction):
  return bpref.grad(params, x, t, loss, reduction)


def _worst_grad_error(dW, db, params, x, t, loss, reduction="mean"):
  """Largest normwise error of (dW, db) against bpref's gradient computed in float64."""
  p64 = bpref.from_arrays([np.asarray(p.W, np.float64) for p in params],
                          [None if p.b is None else np.asarray(p.b, np.float64) for p in params],
                          [p.activation for p in params])
  ref = _bpref_grad(p64, np.asarray(x, np.float64), np.asarray(t, np.float64), loss, reduction)
  worst = 0.0
  for l, g in enumerate(ref):
    assert np.shape(dW[l]) == g.W.shape
    worst = max(worst, normwise_error(dW[l], g.W))
    if g.b is None:
      assert db[l] is None
    else:
      assert np.shape(db[l]) == g.b.shape
      worst = max(worst, normwise_error(db[l], g.b))
  return worst


# Fixed architectures (so each compiles once), together covering every activation, every loss,
# widths 1, non-square and square layers, B = 1, layers without bias and both reductions.
ARCHS = [
    ((3, 5, 1, 4, 3), ("gelu", "silu", "elu", "softmax"), "cross_entropy", "mean", True, 4),
    ((2, 3, 3, 1), ("selu", "leaky_relu", "sigmoid"), "binary_cross_entropy", "sum", True, 3),
    ((4, 4, 2, 2), ("relu", "softsign", "identity"), "squared_error", "mean", False, 1),
    ((3, 6, 2), ("gelu_tanh", "tanh"), "sigmoid_binary_cross_entropy", "mean", True, 5),
    ((2, 4, 4, 3), ("softplus", "tanh", "identity"), "softmax_cross_entropy", "sum", True, 4),
    ((3, 2, 3), ("sigmoid", "softplus"), "huber", "mean", True, 2),
    ((1, 3, 2), ("sin", "identity"), "half_squared_error", "mean", True, 3),
]


def _check_candidate(make_candidate, supported, seeds, dtype=np.float64):
  """make_candidate(reduction)'s candidates agree with bpref on every supported architecture of
  ARCHS, with values drawn from each seed.

  Returns the worst normwise error; also checks that the candidate leaves its inputs alone.
  """
  candidates = {r: make_candidate(r) for r in ("mean", "sum")}
  worst, checked = 0.0, 0
  for seed in seeds:
    rng = np.random.default_rng(seed)
    for sizes, acts, loss, reduction, bias, batch in ARCHS:
      if not set(acts) <= set(supported):
        continue
      checked += 1
      W = [(rng.normal(size=(m, n)) / np.sqrt(n)).astype(dtype) for n, m in zip(sizes, sizes[1:])]
      b = [(0.5 * rng.normal(size=m)).astype(dtype) if bias else None for m in sizes[1:]]
      x = rng.normal(size=(batch, sizes[0])).astype(dtype)
      t = problems.targets(rng, loss, (batch, sizes[-1])).astype(dtype)
      copies = ([w.copy() for w in W], [None if v is None else v.copy() for v in b], x.copy(), t.copy())
      dW, db = candidates[reduction](copies[0], copies[1] if bias else None, list(acts), loss, copies[2],
                                     copies[3])
      assert all(np.array_equal(u, v) for u, v in zip(copies[0], W))
      assert np.array_equal(copies[2], x) and np.array_equal(copies[3], t)
      params = tuple(bpref.Layer(w, v, a) for w, v, a in zip(W, b, acts))
      worst = max(worst, _worst_grad_error(dW, db, params, x, t, loss, reduction))
  assert checked >= len(seeds) * (len(ARCHS) - 1)
  return worst


def test_check_arrays_names_the_layer_and_the_fix():
  W = [np.ones((3, 2)), np.ones((1, 4))]
  with pytest.raises(ValueError, match=r"layer 2: W must have shape \(n_2, 3\); got shape \(1, 4\)"):
    check_arrays(W, None, ["tanh", "identity"], "squared_error", np.ones((5, 2)), np.ones((5, 1)))
  with pytest.raises(ValueError, match="layer 1: unknown activation 'swish'"):
    check_arrays(W[:1], None, ["swish"], "squared_error", np.ones((5, 2)), np.ones((5, 3)))
  with pytest.raises(TypeError, match="layer 1: parameters must have x's dtype float64"):
    check_arrays([np.ones((3, 2), np.float32)], None, "tanh", "squared_error", np.ones((5, 2)),
                 np.ones((5, 3)))


# ---------------------------------------------------------------- PyTorch

@pytest.fixture(scope="module")
def torch():
  return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def bt(torch):
  from bpref.bridges import torch as bridge
  return bridge


TORCH_ACTIVATIONS = ("identity", "relu", "tanh", "sigmoid", "gelu", "gelu_tanh", "silu", "mish", "elu",
                     "selu", "leaky_relu", "softplus", "softsign", "softmax")


def _every_torch_activation(torch):
  """A float64 Sequential using every supported module once, with the names bpref must give it."""
  nn = torch.nn
  torch.manual_seed(0)
  hidden = [(nn.ReLU(), "relu"), (nn.Tanh(), "tanh"), (nn.Sigmoid(), "sigmoid"), (nn.GELU(), "gelu"),
            (nn.GELU(approximate="tanh"), "gelu_tanh"), (nn.SiLU(), "silu"), (nn.Mish(), "mish"), (nn.ELU(), "elu"),
            (nn.SELU(), "selu"), (nn.LeakyReLU(0.01), "leaky_relu"), (nn.Softplus(), "softplus"),
            (nn.Softsign(), "softsign"), (nn.Identity(), "identity")]
  modules, names = [], []
  width = 3
  for module, name in hidden:
    modules += [nn.Linear(width, 4), module]
    names.append(name)
    width = 4
  modules += [nn.Linear(4, 3, bias=False), nn.Softmax(dim=-1)]
  names.append("softmax")
  return nn.Sequential(*modules).double(), names


def test_torch_round_trip_is_exact_and_computes_the_same_function(torch, bt):
  model, names = _every_torch_activation(torch)
  params = bt.to_bpref(model)
  assert [p.activation for p in params] == names
  linears = [m for m in model if isinstance(m, torch.nn.Linear)]
  for p, linear in zip(params, linears):
    assert np.array_equal(p.W, linear.weight.detach().numpy())  # (out, in) on both sides
    assert (p.b is None) == (linear.bias is None)
    if p.b is not None:
      assert np.array_equal(p.b, linear.bias.detach().numpy())
  again = bt.to_bpref(bt.from_bpref(params))
  assert [p.activation for p in again] == names
  for p, q in zip(params, again):
    assert np.array_equal(p.W, q.W) and (p.b is None and q.b is None or np.array_equal(p.b, q.b))
  hidden = len(names) - 1
  assert bt.describe(model) == Architecture((3,) + (4,) * hidden + (3,), tuple(names),
                                            (True,) * hidden + (False,), "float64")
  x = np.random.default_rng(0).normal(size=(7, 3))
  y_torch = model(torch.from_numpy(x)).detach().numpy()
  assert normwise_error(bpref.predict(params, x), y_torch) <= TOL64


def test_torch_autograd_gradients_match_bpref_in_torch_layout(torch, bt):
  model, _ = _every_torch_activation(torch)
  rng = np.random.default_rng(1)
  x, t = rng.normal(size=(6, 3)), rng.dirichlet(np.ones(3), size=6)
  y = model(torch.from_numpy(x))
  loss = -(torch.from_numpy(t) * torch.log(y)).sum(-1).mean()  # bpref's cross_entropy, mean
  loss.backward()
  params = bt.to_bpref(model)
  ours = bpref.grad(params, x, t, "cross_entropy", "mean")
  theirs = bt.grads_from_torch(model)
  assert max(normwise_error(a.W, b.W) for a, b in zip(theirs, ours)) <= TOL64
  as_torch = bt.grads_to_torch(ours, model)
  named = dict(model.named_parameters())
  assert set(as_torch) == set(named)
  for name, g in as_torch.items():
    assert tuple(g.shape) == tuple(named[name].shape)
    assert normwise_error(g.numpy(), named[name].grad.numpy()) <= TOL64


def test_torch_candidate_matches_bpref_on_every_loss_and_activation(torch, bt):
  model, _ = _every_torch_activation(torch)
  make = functools.partial(bt.make_candidate, model)
  worst64 = _check_candidate(make, TORCH_ACTIVATIONS, seeds=range(4))
  assert worst64 <= TOL64, worst64
  worst32 = _check_candidate(make, TORCH_ACTIVATIONS, seeds=range(2), dtype=np.float32)
  assert worst32 <= TOL32, worst32


def test_torch_candidate_sum_reduction_is_b_times_the_mean(torch, bt):
  model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
  params = bt.to_bpref(model.double())
  rng = np.random.default_rng(2)
  x, t = rng.normal(size=(5, 2)), rng.normal(size=(5, 2))
  W, b, names = _arrays(params)
  dW_sum, db_sum = bt.make_candidate(model, reduction="sum")(W, b, names, "huber", x, t)
  assert _worst_grad_error(dW_sum, db_sum, params, x, t, "huber", "sum") <= TOL64
  dW_mean, _ = bt.make_candidate(model)(W, b, names, "huber", x, t)
  assert normwise_error(dW_sum[0], 5 * dW_mean[0]) <= TOL64


@pytest.mark.parametrize("build, message", [
    (lambda nn: nn.Sequential(nn.Linear(3, 4), nn.Dropout(), nn.Linear(4, 2)),
     r"model\[1\]: torch.nn.Dropout is not supported; supported: Linear, ReLU"),
    (lambda nn: nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(0.2)),
     r"model\[1\]: torch.nn.LeakyReLU\(0.2\) is not supported; bpref's leaky_relu has negative_slope"),
    (lambda nn: nn.Sequential(nn.Linear(3, 4), nn.ELU(alpha=2.0)), r"model\[1\]: torch.nn.ELU\(alpha=2.0\)"),
    (lambda nn: nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=0)), r"Softmax\(dim=0\) is not supported"),
    (lambda nn: nn.Sequential(nn.ReLU(), nn.Linear(3, 4)), r"model\[0\]: torch.nn.ReLU comes before any Linear"),
    (lambda nn: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Tanh()),
     r"model\[2\]: torch.nn.Tanh follows another activation"),
    (lambda nn: nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=-1), nn.Linear(4, 2)),
     r"model\[1\]: torch.nn.Softmax: softmax is allowed only after the last Linear"),
    (lambda nn: nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.ReLU())),
     r"model\[1\]: torch.nn.Sequential is not supported"),
    (lambda nn: nn.Sequential(nn.Identity()), "no Linear module"),
])
def test_torch_unsupported_models_are_refused_by_name(torch, bt, build, message):
  model = build(torch.nn)
  with pytest.raises(ValueError, match=message):
    bt.to_bpref(model)
  with pytest.raises(ValueError, match=message):
    bt.make_candidate(model)


def test_torch_refuses_non_sequential_and_half_precision(torch, bt):
  with pytest.raises(TypeError, match="expected a torch.nn.Sequential"):
    bt.to_bpref(torch.nn.Linear(2, 2))
  with pytest.raises(TypeError, match=r"torch.float32 or torch.float64; got torch.bfloat16 .*\.double\(\)"):
    bt.to_bpref(torch.nn.Sequential(torch.nn.Linear(2, 2)).to(torch.bfloat16))


def test_oracle_passes_the_torch_candidate(torch, bt):
  oracle = pytest.importorskip("bpref.oracle")
  model, _ = _every_torch_activation(torch)
  report = oracle.check(bt.make_candidate(model), activations=("relu", "gelu"),
                        losses=("softmax_cross_entropy",), max_depth=2, examples=4, seed=3)
  assert report.verdict == "pass", report.message
  assert report.cases >= 4


# ---------------------------------------------------------------- Equinox

@pytest.fixture(scope="module")
def eqx():
  return pytest.importorskip("equinox")


@pytest.fixture(scope="module")
def be(eqx):
  from bpref.bridges import equinox as bridge
  return bridge


def _mlp_loss(model, x, t):
  y = jax.vmap(model)(x)
  return jnp.mean(jnp.sum((t - y) ** 2, axis=-1))  # bpref's squared_error, mean


@pytest.mark.parametrize("activation, name", [
    (jax.nn.relu, "relu"), (jax.nn.gelu, "gelu_tanh"),
    (functools.partial(jax.nn.gelu, approximate=False), "gelu"), (jax.nn.swish, "silu"),
    (jnp.tanh, "tanh"), (jax.nn.soft_sign, "softsign"), (jax.nn.mish, "mish"),
])
def test_equinox_mlp_round_trip_and_gradients(eqx, be, activation, name):
  mlp = eqx.nn.MLP(3, 2, 4, 2, activation=activation, final_activation=jax.nn.sigmoid,
                   dtype=jnp.float64, key=jax.random.key(0))
  params = be.to_bpref(mlp)
  assert [p.activation for p in params] == [name, name, "sigmoid"]
  for p, layer in zip(params, mlp.layers):
    assert np.array_equal(p.W, layer.weight) and np.array_equal(p.b, layer.bias)
  assert be.describe(mlp) == Architecture((3, 4, 4, 2), (name, name, "sigmoid"), (True,) * 3, "float64")
  again = be.to_bpref(be.from_bpref(params))
  assert all(np.array_equal(p.W, q.W) and np.array_equal(p.b, q.b) for p, q in zip(params, again))
  rng = np.random.default_rng(0)
  x, t = rng.normal(size=(5, 3)), rng.normal(size=(5, 2))
  assert normwise_error(bpref.predict(params, x), jax.vmap(mlp)(x)) <= TOL64
  theirs = eqx.filter_grad(_mlp_loss)(mlp, x, t)
  ours = be.grads_to_equinox(bpref.grad(params, x, t), mlp)
  for a, b in zip(jax.tree_util.tree_leaves(eqx.filter(ours, eqx.is_array)),
                  jax.tree_util.tree_leaves(eqx.filter(theirs, eqx.is_array))):
    assert a.shape == b.shape and normwise_error(a, b) <= TOL64


def test_equinox_candidate_on_its_own_mlp_and_on_every_loss_and_activation(eqx, be):
  mlp = eqx.nn.MLP(3, 2, 4, 1, activation=jax.nn.elu, use_final_bias=False, dtype=jnp.float64,
                   key=jax.random.key(1))
  candidate = be.make_candidate(mlp)
  params = be.to_bpref(mlp)
  rng = np.random.default_rng(4)
  x, t = rng.normal(size=(6, 3)), rng.normal(size=(6, 2))
  W, b, names = _arrays(params)
  dW, db = candidate(W, b, names, "squared_error", x, t)
  assert db[-1] is None
  assert _worst_grad_error(dW, db, params, x, t, "squared_error") <= TOL64
  worst = _check_candidate(functools.partial(be.make_candidate, mlp), bpref.activations.ACTIVATIONS,
                           seeds=range(3))
  assert worst <= TOL64, worst


def test_equinox_unsupported_models_are_refused_by_name(eqx, be):
  key = jax.random.key(0)
  with pytest.raises(ValueError, match=r"layer 2 \(final_activation\): jax.nn.softmax is not supported"):
    be.to_bpref(eqx.nn.MLP(3, 2, 4, 1, final_activation=jax.nn.softmax, key=key))
  with pytest.raises(ValueError, match=r"layers 1-2 \(activation\): activation <lambda> is not supported"):
    be.make_candidate(eqx.nn.MLP(3, 2, 4, 2, activation=lambda z: z * z, key=key))
  with pytest.raises(ValueError, match="scan=True is not supported"):
    be.to_bpref(eqx.nn.MLP(3, 2, 4, 3, scan=True, key=key))
  with pytest.raises(TypeError, match="expected an equinox.nn.MLP"):
    be.to_bpref(eqx.nn.Linear(3, 2, key=key))
  mixed = bpref.init(key, (3, 4, 5, 2), ("tanh", "relu", "identity"))
  with pytest.raises(ValueError, match="one hidden width, one hidden activation"):
    be.from_bpref(mixed)


# ---------------------------------------------------------------- Flax

def test_flax_params_dicts_convert_without_flax_modules():
  from bpref.bridges import flax as bf
  rng = np.random.default_rng(6)
  variables = {"params": {"Dense_0": {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=4)},
                          "Dense_1": {"kernel": rng.normal(size=(4, 2))}}}
  params = bf.to_bpref(variables, [jax.nn.relu, "identity"])
  assert params[0].W.shape == (4, 3) and np.array_equal(params[0].W, variables["params"]["Dense_0"]["kernel"].T)
  assert params[1].b is None and [p.activation for p in params] == ["relu", "identity"]
  back = bf.from_bpref(params)["params"]
  assert np.array_equal(back["Dense_0"]["kernel"], variables["params"]["Dense_0"]["kernel"])
  assert set(back["Dense_1"]) == {"kernel"}
  x, t = rng.normal(size=(5, 3)), rng.normal(size=(5, 2))
  grads = bf.grads_to_flax(bpref.grad(params, x, t))["params"]
  assert grads["Dense_0"]["kernel"].shape == (3, 4) and grads["Dense_1"]["kernel"].shape == (4, 2)
  # dC/dkernel by jax.grad through the dict layout itself.

  def cost(p):
    z = jnp.maximum(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"][None, :], 0)
    return jnp.mean(jnp.sum((t - z @ p["Dense_1"]["kernel"]) ** 2, axis=-1))

  theirs = jax.grad(cost)(variables["params"])
  for name in ("Dense_0", "Dense_1"):
    for leaf in theirs[name]:
      assert normwise_error(grads[name][leaf], theirs[name][leaf]) <= TOL64
  # Layers come in the order of their numbers even when the dict is sorted as text.
  many = {f"Dense_{i}": {"kernel": np.eye(2) * (i + 1)} for i in (10, 2, 0, 1, 3, 4, 5, 6, 7, 8, 9)}
  order = bf.to_bpref(many, "identity")
  assert [float(p.W[0, 0]) for p in order] == [float(i + 1) for i in range(11)]


def test_flax_dicts_that_are_not_dense_mlps_are_refused_by_name():
  from bpref.bridges import flax as bf
  with pytest.raises(ValueError, match=r"layer 2: params\['LayerNorm_0'\] has entries \['bias', 'scale'\]"):
    bf.to_bpref({"params": {"Dense_0": {"kernel": np.ones((3, 4))},
                            "LayerNorm_0": {"scale": np.ones(4), "bias": np.ones(4)}}}, "relu")
  with pytest.raises(ValueError, match=r"collections \['batch_stats'\] besides 'params'"):
    bf.to_bpref({"params": {"Dense_0": {"kernel": np.ones((3, 4))}}, "batch_stats": {}}, "relu")
  with pytest.raises(ValueError, match="1 Dense layers but 2 activations"):
    bf.to_bpref({"params": {"Dense_0": {"kernel": np.ones((3, 4))}}}, ["relu", "tanh"])
  with pytest.raises(ValueError, match="layer 1: activation <lambda> is not supported"):
    bf.to_bpref({"params": {"Dense_0": {"kernel": np.ones((3, 4))}}}, [lambda z: z])
  with pytest.raises(ValueError, match="created"):
    bf.to_bpref({"params": {"Dense_0": {"kernel": np.ones((4, 2))}, "Dense_1": {"kernel": np.ones((3, 4))}}},
                "identity")


@pytest.fixture(scope="module")
def flax_nn():
  pytest.importorskip("flax")
  import flax.linen as nn
  return nn


def test_flax_mlp_candidate_matches_bpref_on_every_loss_and_activation(flax_nn):
  from bpref.bridges import flax as bf
  mlp = bf.MLP(features=(1,), activations=("relu",))
  make = functools.partial(bf.make_candidate, mlp)
  worst = _check_candidate(make, bpref.activations.ACTIVATIONS, seeds=range(3))
  assert worst <= TOL64, worst
  worst32 = _check_candidate(make, bpref.activations.ACTIVATIONS, seeds=range(1), dtype=np.float32)
  assert worst32 <= TOL32, worst32


def test_flax_user_module_round_trip_and_candidate(flax_nn):
  from bpref.bridges import flax as bf
  nn = flax_nn

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.gelu(nn.Dense(4, param_dtype=jnp.float64)(x), approximate=False)
      x = nn.tanh(nn.Dense(3, param_dtype=jnp.float64)(x))
      return nn.Dense(2, param_dtype=jnp.float64)(x)

  net = Net()
  rng = np.random.default_rng(8)
  x, t = rng.normal(size=(5, 3)), rng.dirichlet(np.ones(2), size=5)
  variables = net.init(jax.random.key(0), x)
  acts = ("gelu", "tanh", "identity")
  params = bf.to_bpref(variables, acts)
  assert bf.describe(variables, acts) == Architecture((3, 4, 3, 2), acts, (True,) * 3, "float64")
  assert normwise_error(bpref.predict(params, x), net.apply(variables, x)) <= TOL64
  mlp = bf.module(params)
  assert normwise_error(mlp.apply(bf.from_bpref(params), x), net.apply(variables, x)) <= TOL64
  W, b, names = _arrays(params)
  dW, db = bf.make_candidate(net)(W, b, names, "softmax_cross_entropy", x, t)
  assert _worst_grad_error(dW, db, params, x, t, "softmax_cross_entropy") <= TOL64
  with pytest.raises(ValueError, match="has 3 Dense layers but 2 weight arrays"):
    bf.make_candidate(net)(W[:2], b[:2], names[:2], "squared_error", x, rng.normal(size=(5, 3)))
  with pytest.raises(TypeError, match="expected a flax.linen Module"):
    bf.make_candidate(variables)
