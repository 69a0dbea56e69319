"""bpref.witnesses.padding: the witnesses' own padded cases, apart from bpref.scale.fast's."""

import numpy as np

from bpref import problems as _problems
from bpref.structures import Layer
from bpref.witnesses import autodiff, finite_diff, padding


def test_a_padded_case_holds_the_network_in_its_corners_and_its_sizes_as_masks():
  rng = np.random.default_rng(0)
  params = (Layer(rng.normal(size=(3, 2)), rng.normal(size=3), "tanh"),
            Layer(rng.normal(size=(1, 3)), None, "sigmoid"))
  x, t = rng.normal(size=(2, 2)), rng.uniform(size=(2, 1))
  problems = [(params, x, t, "binary_cross_entropy", "sum")]
  p = padding.bucketed(problems, lambda chunk, names: chunk,
                       lambda out, k, params, x2, single: padding.Padded(*(f[k] for f in out)))[0]
  assert p.W.shape == (8, 8, 8) and p.x.shape == p.t.shape == (8, 8)  # the least bucket
  for l, layer in enumerate(params):
    rows, cols = layer.W.shape
    np.testing.assert_array_equal(p.W[l, :rows, :cols], layer.W)
    assert not np.any(p.W[l, rows:]) and not np.any(p.W[l, :, cols:])
  np.testing.assert_array_equal(p.b[0, :3], params[0].b)
  assert not np.any(p.b[0, 3:]) and not np.any(p.b[1:])  # a bias-free layer holds zeros
  np.testing.assert_array_equal(p.x[:2, :2], x)
  np.testing.assert_array_equal(p.t[:2, :1], t)
  assert not np.any(p.x[2:]) and not np.any(p.x[:, 2:]) and not np.any(p.t[:, 1:])
  assert np.asarray(p.live()).tolist() == [True, True] + [False] * 6
  np.testing.assert_array_equal(np.asarray(p.units()).sum(axis=1), [3, 1, 0, 0, 0, 0, 0, 0])
  assert np.asarray(p.rows()).sum() == 2 and np.asarray(p.outputs()).tolist() == [True] + [False] * 7
  assert padding.ACTIVATIONS[p.act[1]] == "sigmoid"
  assert padding.LOSSES[p.loss] == "binary_cross_entropy" and float(p.divisor(np.float64)) == 1.0
  back = padding.cut_params(p.W, p.b, params)
  for got, want in zip(back, params):
    np.testing.assert_array_equal(got.W, want.W)
    assert (got.b is None) == (want.b is None) and got.activation == want.activation


def test_a_narrow_bucket_switches_over_its_own_names_each_fused_loss_with_its_logit_loss():
  rng = np.random.default_rng(1)
  problems = [_problems.random_problem(rng, np.float64, max_depth=2, losses=(loss,), uses=act)
              for loss, act in (("cross_entropy", "elu"), ("huber", "sin"))]
  seen = []
  def compute(chunk, names):
    seen.append(names)
    return chunk
  unpack = lambda out, k, params, x2, single: padding.Padded(*(f[k] for f in out))  # noqa: E731
  cases = padding.bucketed(problems, compute, unpack, narrow=True)
  (names,) = set(seen)
  used = {layer.activation for p in problems for layer in p.params}
  assert set(names.activations) == used and "elu" in used and "sin" in used
  assert names.activations == tuple(n for n in padding.ACTIVATIONS if n in used)
  assert set(names.losses) == {"cross_entropy", "softmax_cross_entropy", "huber"}
  for p, case in zip(problems, cases):
    assert names.losses[case.loss] == p.loss
    assert [names.activations[i] for i in case.act[:len(p.params)]] == [l.activation for l in p.params]
  padding.bucketed(problems, compute, unpack)
  assert seen[-1] == padding.EVERY


def _narrow_cases():
  rng = np.random.default_rng(2)
  problems = [_problems.random_problem(rng, np.dtype(np.float32), max_depth=3, losses=(loss,),
                                       uses=act)
              for loss, act in (("cross_entropy", "tanh"), ("binary_cross_entropy", "relu"),
                                ("huber", "softplus"))]
  return rng, problems, autodiff.grads_many(problems)


# The same branch functions on the same values: a switch over fewer names changes which
# branches are compiled, not the arithmetic of the one a case takes, so the bits are the same.

def test_the_narrow_autodiff_witness_gives_to_the_bit_what_the_one_of_every_name_gives():
  _, problems, wide = _narrow_cases()
  narrow = autodiff.grads_many(problems, narrow=True)
  assert [l.W.tolist() for g in narrow for l in g] == [l.W.tolist() for g in wide for l in g]
  assert [l.b.tolist() for g in narrow for l in g] == [l.b.tolist() for g in wide for l in g]


def test_the_narrow_finite_differences_give_to_the_bit_what_those_of_every_name_give():
  rng, problems, wide = _narrow_cases()
  directions = [tuple(Layer(rng.normal(size=l.W.shape).astype(np.float32), None if l.b is None
                            else rng.normal(size=l.b.shape).astype(np.float32), l.activation)
                      for l in p.params)
                for p in problems]
  every = finite_diff.estimates_many(problems, wide, directions, shape=(3, 8, 8))
  few = finite_diff.estimates_many(problems, wide, directions, shape=(3, 8, 8), narrow=True)
  for e, f in zip(every, few):
    for field in ("central", "richardson", "complex"):
      assert ([l.W.tolist() for l in getattr(f, field) or ()]
              == [l.W.tolist() for l in getattr(e, field) or ()]), field
    assert f.taylor_order == e.taylor_order or np.isnan(f.taylor_order) and np.isnan(e.taylor_order)
