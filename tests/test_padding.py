"""bpref.witnesses.padding: the witnesses' own padded cases, apart from bpref.scale.fast's."""

import numpy as np

from bpref.structures import Layer
from bpref.witnesses import padding


def test_a_padded_case_holds_the_network_in_its_corners_and_its_sizes_as_masks():
  rng = np.random.default_rng(0)
  params = (Layer(rng.normal(size=(3, 2)), rng.normal(size=3), "tanh"),
            Layer(rng.normal(size=(1, 3)), None, "sigmoid"))
  x, t = rng.normal(size=(2, 2)), rng.uniform(size=(2, 1))
  problems = [(params, x, t, "binary_cross_entropy", "sum")]
  p = padding.bucketed(problems, lambda chunk: chunk,
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
