"""Symbolic proofs of the backward steps of ``bpref.layers.pool`` and ``bpref.layers.dropout``
(proofs/pool.md), and a counterexample to each classic mistake listed there.

Max pooling. x (H x W, one channel) and the cotangent g = dC/dout (H_out x W_out) are symbols
and phi = sum_ij g_ij Max(window ij) with sympy's Max. phi is piecewise linear: the plane splits
into open regions, one per choice of a strict maximum in every window (an "argmax pattern"), and
on each region every Max is one fixed entry, so the gradient is constant there. sympy
differentiates Max into Heaviside factors; evaluated at a point with distinct entries each factor
is exactly 0 or 1, so the derivative at one point of a region is the derivative on the whole
region. The proof enumerates every realizable pattern (3 x 3 with 2 x 2 windows at stride 1: the
150 patterns that the 9! orderings realize; 4 x 4 with 2 x 2 windows at stride 2: all 4^4) and
300 or more patterns of 5 x 5 with 3 x 3 windows at stride 2 (400 random orderings), and checks
(MP3) against sympy's derivative, as polynomials in g.

Ties lie on the regions' boundaries, where phi need not be differentiable. There the proof
shows what a valid convention must satisfy: the gradient on every region sums, over a window
(non-overlapping windows), to that window's g, since phi(x + t 1_W) = phi(x) + t g_W; so every
limit of gradients does too. bpref's first-maximum rule (MP2) is the limit from the region
where the first tied entry is raised, the last-maximum rule from the one where the last is; the
"every tied maximum" rule sums to (number of ties) g_W and is no limit of gradients.

Average pooling. out = the mean of each window is linear in x: sympy's derivative is (AP2) at
every point, for windows apart, overlapping and with rows past the last window.

Dropout. out = x m / (1 - p) is linear in x for every mask m and p < 1; sympy's derivative of
sum(g out) is (DO2) with m and p symbols.
"""

import functools
import itertools

import jax.numpy as jnp
import numpy as np
import sympy as sp

from bpref.layers import dropout, pool
from bpref.error import max_norm_error
from bpref.tolerance import gradient_tolerance


# ---------------------------------------------------------------- max pooling

@functools.cache
def symbolic_maxpool(H, W, p, s):
  """Symbols x (H, W), g (H_out, W_out), phi = sum g * Max(window) (MP1), and sympy's gradient."""
  x = sp.Matrix(H, W, lambda i, j: sp.Symbol(f"x{i}_{j}", real=True))
  Ho, Wo = (H - p) // s + 1, (W - p) // s + 1
  g = sp.Matrix(Ho, Wo, lambda i, j: sp.Symbol(f"g{i}_{j}", real=True))
  phi = sum(g[i, j] * sp.Max(*[x[i * s + a, j * s + b] for a in range(p) for b in range(p)])
            for i in range(Ho) for j in range(Wo))
  grad = sp.Matrix(H, W, lambda i, j: sp.diff(phi, x[i, j]))
  return dict(x=x, g=g, phi=phi, grad=grad, H=H, W=W, p=p, s=s, Ho=Ho, Wo=Wo)


def maxpool_hand(mp, values, choose=None):
  """dx by (MP2), (MP3) at the point ``values`` (H, W), as a matrix in the symbols g: each
  window's g at its chosen entry (``choose(window values) -> k``, default the first maximum in
  row-major order, np.argmax's), summed over the windows."""
  p, s = mp["p"], mp["s"]
  choose = choose or (lambda w: int(np.argmax(w)))
  dx = sp.zeros(mp["H"], mp["W"])
  for i in range(mp["Ho"]):
    for j in range(mp["Wo"]):
      k = choose(values[i * s:i * s + p, j * s:j * s + p].ravel())
      dx[i * s + k // p, j * s + k % p] += mp["g"][i, j]  # (MP3): summed over the windows
  return dx


def _at(mp, values):
  return {mp["x"][i, j]: sp.Integer(int(values[i, j])) for i in range(mp["H"]) for j in range(mp["W"])}


def _patterns(values, p, s):
  """The argmax pattern of each point of ``values`` (n, H, W): the first maximum of every window."""
  n, H, W = values.shape
  Ho, Wo = (H - p) // s + 1, (W - p) // s + 1
  return np.stack([np.argmax(values[:, i * s:i * s + p, j * s:j * s + p].reshape(n, -1), axis=1)
                   for i in range(Ho) for j in range(Wo)], axis=1)


def _one_point_per_pattern(values, p, s):
  """The first point of ``values`` (n, H, W) for each argmax pattern they realize."""
  _, first = np.unique(_patterns(values, p, s), axis=0, return_index=True)
  return values[np.sort(first)]


def _regions(H, W, p, s):
  """One point with distinct integer entries in each region the proof covers."""
  if (H, W) == (3, 3):  # every ordering of 9 entries: every realizable pattern
    perms = np.array(list(itertools.permutations(range(9))), dtype=np.int64).reshape(-1, 3, 3)
    return _one_point_per_pattern(perms, p, s)
  if s >= p:  # windows apart: every pattern, built directly
    points = []
    windows = [(i, j) for i in range((H - p) // s + 1) for j in range((W - p) // s + 1)]
    for choice in itertools.product(range(p * p), repeat=len(windows)):
      v = np.arange(H * W).reshape(H, W)  # distinct entries, below H W
      for (i, j), k in zip(windows, choice):
        v[i * s + k // p, j * s + k % p] += H * W * (1 + i * 10 + j)  # the window's strict maximum
      points.append(v)
    return np.stack(points)
  rng = np.random.default_rng(0)
  perms = np.stack([rng.permutation(H * W).reshape(H, W) for _ in range(400)])
  return _one_point_per_pattern(perms, p, s)


def _is_zero_in_g(expr) -> bool:
  return sp.expand(expr) == 0


CONFIGS = ((3, 3, 2, 1), (4, 4, 2, 2), (5, 5, 3, 2))
"""(H, W, pool, stride) of the proofs: overlapping windows (an entry shared by four windows),
windows apart, and 3 x 3 windows overlapping in a row and a column."""


def test_maxpool_backward_equals_sympy_derivative_on_every_region():
  """(MP1)-(MP3): on each region the handwritten dx is sympy's derivative of sum(g * out)."""
  for H, W, p, s in CONFIGS:
    mp = symbolic_maxpool(H, W, p, s)
    points = _regions(H, W, p, s)
    assert len(points) >= {(3, 3): 150, (4, 4): 256, (5, 5): 300}[(H, W)], len(points)
    for values in points:
      at, hand = _at(mp, values), maxpool_hand(mp, values)
      for i in range(H):
        for j in range(W):
          assert _is_zero_in_g(mp["grad"][i, j].xreplace(at) - hand[i, j]), (H, W, p, s, values, i, j)


def test_the_check_sees_a_wrong_routing():
  """The comparison is not vacuous: the last maximum in place of the first is caught."""
  mp = symbolic_maxpool(3, 3, 2, 1)
  values = np.array([[0, 8, 1], [2, 3, 4], [5, 6, 7]])
  wrong = maxpool_hand(mp, values, choose=lambda w: int(np.argmin(w)))
  at = _at(mp, values)
  assert any(not _is_zero_in_g(mp["grad"][i, j].xreplace(at) - wrong[i, j])
             for i in range(3) for j in range(3))


def _window_sums(mp, dx):
  """Sum of dx over each window (windows apart): the derivative along 1_W."""
  p, s = mp["p"], mp["s"]
  return [sum(dx[i * s + a, j * s + b] for a in range(p) for b in range(p))
          for i in range(mp["Ho"]) for j in range(mp["Wo"])]


TIES = np.array([[1, 1, 0, 5], [0, 1, 0, 0], [2, 0, 3, 3], [0, 2, 3, 3]])
"""4 x 4, windows of 2 x 2 at stride 2: three tied maxima, one maximum, two tied, four tied."""


def test_the_first_tied_maximum_is_a_limit_of_gradients_and_every_tie_is_not():
  """At ties: the gradient on every region sums over each window to that window's g, so every
  limit of gradients does. The first-maximum rule (MP2) is the gradient of the region where each
  window's first tied entry is raised by t > 0 (the limit t -> 0+), and the last-maximum rule that
  of the region where the last is; sending g to every tied maximum sums to (ties) g."""
  mp = symbolic_maxpool(4, 4, 2, 2)
  for values in _regions(4, 4, 2, 2)[::17]:  # the window sums on regions
    sums = _window_sums(mp, mp["grad"].xreplace(_at(mp, values)))
    assert all(_is_zero_in_g(total - mp["g"][k // 2, k % 2]) for k, total in enumerate(sums))

  def raised(which):
    values = sp.Matrix(4, 4, lambda i, j: sp.Integer(int(TIES[i, j])))
    t = sp.Rational(1, 1000)
    for i in range(2):
      for j in range(2):
        w = TIES[2 * i:2 * i + 2, 2 * j:2 * j + 2].ravel()
        tied = np.flatnonzero(w == w.max())
        k = tied[0] if which == "first" else tied[-1]
        values[2 * i + k // 2, 2 * j + k % 2] += t
    return {mp["x"][i, j]: values[i, j] for i in range(4) for j in range(4)}

  first = maxpool_hand(mp, TIES)
  last = maxpool_hand(mp, TIES, choose=lambda w: len(w) - 1 - int(np.argmax(w[::-1])))
  for rule, which in ((first, "first"), (last, "last")):
    limit = mp["grad"].xreplace(raised(which))
    assert all(_is_zero_in_g(limit[i, j] - rule[i, j]) for i in range(4) for j in range(4)), which
  every = sp.zeros(4, 4)
  for i in range(2):
    for j in range(2):
      w = TIES[2 * i:2 * i + 2, 2 * j:2 * j + 2]
      for a, b in zip(*np.nonzero(w == w.max())):
        every[2 * i + a, 2 * j + b] += mp["g"][i, j]
  sums = _window_sums(mp, every)
  assert [sp.expand(total / mp["g"][k // 2, k % 2]) for k, total in enumerate(sums)] == [3, 1, 2, 4]


def _true(mp, values):
  return mp["grad"].xreplace(_at(mp, values))


def _differs(a, b) -> bool:
  return any(not _is_zero_in_g(a[i, j] - b[i, j]) for i in range(a.rows) for j in range(a.cols))


def test_maxpool_mistake_overlap_overwritten():
  """dx[max] = g (assigned) where windows overlap: the shared maximum keeps one window's g."""
  mp = symbolic_maxpool(3, 3, 2, 1)
  values = np.array([[0, 1, 2], [3, 8, 4], [5, 6, 7]])  # x[1, 1] is every window's maximum
  wrong = sp.zeros(3, 3)
  for i in range(2):
    for j in range(2):
      wrong[1, 1] = mp["g"][i, j]  # the last window wins
  assert _differs(_true(mp, values), wrong)
  assert _is_zero_in_g(_true(mp, values)[1, 1] - sum(mp["g"]))


def test_maxpool_mistake_max_init_zero():
  """A running maximum started at 0 chooses nothing in a window of negatives: g is lost."""
  mp = symbolic_maxpool(4, 4, 2, 2)
  values = -1 - np.arange(16).reshape(4, 4)  # all negative
  wrong = maxpool_hand(mp, values)
  wrong[0, 0] = 0  # the first window's maximum, x[0, 0] = -1, never beats the initial 0
  assert _differs(_true(mp, values), wrong)


def test_maxpool_mistake_mask_from_the_channel_maximum():
  """The mask x == max of the whole channel: a window without that maximum gets nothing."""
  mp = symbolic_maxpool(4, 4, 2, 2)
  values = np.arange(16).reshape(4, 4)
  wrong = sp.zeros(4, 4)
  wrong[3, 3] = mp["g"][1, 1]  # only the window holding 15
  assert _differs(_true(mp, values), wrong)


def test_maxpool_proof_evaluates_to_bpref():
  """The proven formula at random float64 points is what bpref.layers.pool computes."""
  rng = np.random.default_rng(7)
  for H, W, p, s in CONFIGS:
    mp = symbolic_maxpool(H, W, p, s)
    x, g = rng.normal(size=(H, W)), rng.normal(size=(mp["Ho"], mp["Wo"]))
    hand = maxpool_hand(mp, x)
    at = {mp["g"][i, j]: g[i, j] for i in range(mp["Ho"]) for j in range(mp["Wo"])}
    proven = np.array(hand.xreplace(at), dtype=float)
    ours = pool.grads(jnp.asarray(x[None, None]), jnp.asarray(g[None, None]), p, s)[0, 0]
    assert max_norm_error(ours, proven) <= gradient_tolerance(np.float64)


# ---------------------------------------------------------------- average pooling

def test_avgpool_backward_equals_sympy_derivative_and_bpref():
  """(AP1) is linear: sympy's derivative of phi = sum g * mean(window) is (AP2) as polynomials in
  g, for windows apart, overlapping and with rows left over; and at a float64 point it is what
  bpref.layers.pool computes."""
  rng = np.random.default_rng(8)
  for H, W, p, s in ((4, 4, 2, 2), (3, 3, 2, 1), (5, 5, 3, 2), (5, 4, 3, 1)):
    x = sp.Matrix(H, W, lambda i, j: sp.Symbol(f"x{i}_{j}", real=True))
    Ho, Wo = (H - p) // s + 1, (W - p) // s + 1
    g = sp.Matrix(Ho, Wo, lambda i, j: sp.Symbol(f"g{i}_{j}", real=True))
    phi = sum(g[i, j] * sp.Rational(1, p * p) * sum(x[i * s + a, j * s + b] for a in range(p)
                                                   for b in range(p))
              for i in range(Ho) for j in range(Wo))  # (AP1)
    hand = sp.zeros(H, W)
    for i, j, a, b in itertools.product(range(Ho), range(Wo), range(p), range(p)):
      hand[i * s + a, j * s + b] += g[i, j] / (p * p)  # (AP2)
    for r, c in itertools.product(range(H), range(W)):
      assert sp.expand(sp.diff(phi, x[r, c]) - hand[r, c]) == 0
    gv = rng.normal(size=(Ho, Wo))
    proven = np.array(hand.xreplace({g[i, j]: gv[i, j] for i in range(Ho) for j in range(Wo)}),
                      dtype=float)
    ours = pool.avg_grads(jnp.asarray(rng.normal(size=(1, 1, H, W))), jnp.asarray(gv[None, None]),
                          p, s)[0, 0]
    assert max_norm_error(ours, proven) <= gradient_tolerance(np.float64)


# ---------------------------------------------------------------- dropout

def symbolic_dropout(n=4):
  x = sp.symbols(f"x0:{n}", real=True)
  g = sp.symbols(f"g0:{n}", real=True)
  m = sp.symbols(f"m0:{n}", real=True)
  p = sp.Symbol("p", real=True)
  out = [x[i] * m[i] / (1 - p) for i in range(n)]  # (DO1)
  phi = sum(gi * oi for gi, oi in zip(g, out))
  return dict(x=x, g=g, m=m, p=p, phi=phi, n=n)


def test_dropout_backward_equals_sympy_derivative():
  """(DO2): d/dx_i sum(g out) = g_i m_i / (1 - p), for every mask and every p != 1."""
  d = symbolic_dropout()
  for i in range(d["n"]):
    hand = d["g"][i] * d["m"][i] / (1 - d["p"])  # (DO2)
    assert sp.simplify(sp.diff(d["phi"], d["x"][i]) - hand) == 0


def test_cs231n_keep_probability_and_prescaled_mask_are_the_same_gradient():
  """CS231n: q = 1 - p kept, mask (rand < q) / q, dx = dout * mask: (DO2) with q = 1 - p."""
  d = symbolic_dropout(1)
  q = sp.Symbol("q", positive=True)
  cs231n = d["g"][0] * (d["m"][0] / q)
  assert sp.simplify(cs231n.subs(q, 1 - d["p"]) - sp.diff(d["phi"], d["x"][0])) == 0


def test_dropout_mistakes_differ_from_the_derivative_unless_p_is_zero():
  """The scale missing, twice, non-inverted: each is off by a factor that is 1 for no p in
  [0, 1) but p = 0;
  a mask drawn anew differs at every unit where the two masks differ and g != 0."""
  d = symbolic_dropout(1)
  g, m, p = d["g"][0], d["m"][0], d["p"]
  true = sp.diff(d["phi"], d["x"][0])
  for wrong in (g * m, g * m / (1 - p) ** 2, g * m * (1 - p)):
    ratio = sp.simplify(wrong / true)
    roots = {r for r in sp.solve(sp.Eq(ratio, 1), p) if 0 <= r < 1}  # p in [0, 1)
    assert ratio != 1 and roots == {0}, ratio
  assert sp.simplify(g * 1 / (1 - p) - true.subs(m, 0)) != 0  # kept anew where m = 0


def test_dropout_proof_evaluates_to_bpref():
  d = symbolic_dropout()
  rng = np.random.default_rng(3)
  x, g = rng.normal(size=4), rng.normal(size=4)
  mask = np.array([1.0, 0.0, 1.0, 1.0])
  for pv in (0.0, 0.1, 0.5, 0.9):
    hand = [d["g"][i] * d["m"][i] / (1 - d["p"]) for i in range(4)]
    at = {**dict(zip(d["g"], g)), **dict(zip(d["m"], mask)), d["p"]: pv}
    proven = np.array([float(h.xreplace(at)) for h in hand])
    ours = dropout.grads(jnp.asarray(x), jnp.asarray(mask), pv, jnp.asarray(g))
    assert max_norm_error(ours, proven) <= gradient_tolerance(np.float64)
