"""Section 2.4 measured: the multiply-add counts of proofs/costs.py against XLA, and the
memory of the tape against the number of weights (proofs/scaling.md).

XLA's ``cost_analysis`` counts 2 flops per multiply-add of a matmul and 1 flop per
elementwise arithmetic operation (exp, tanh, ... are "transcendentals", apart).
With identity activations and no biases the only elementwise work is the loss and
its gradient, which touches the B n_L outputs and nothing else, so the flops of
every function are 2 B MACs plus one constant per (function, B, n_L): differences
between architectures are exactly 2 B x the differences of the MAC formulas.
"""

import functools
import itertools
import math
from fractions import Fraction

import jax
import numpy as np
import pytest

import bpref
import costs

B = 8
# Same n_L = 2 and batch; every other width differs, depths 2 to 4, non-square layers.
ARCHS = ((3, 4, 2), (5, 4, 2), (7, 6, 5, 2), (2, 8, 3, 2), (4, 3, 6, 5, 2))
LINEAR = tuple(name for name in costs.FUNCTIONS if name != "lambdas")


@functools.lru_cache(maxsize=None)
def measured(name, sizes, batch=B, activation="identity", bias=False):
  """XLA's analysis of FUNCTIONS[name] on costs.problem(...), compiled once per module."""
  return costs.measure(name, *costs.problem(sizes, batch, activation, bias))


@pytest.fixture(scope="module")
def identity_flops():
  return {sizes: {name: measured(name, sizes)["flops"] for name in LINEAR} for sizes in ARCHS}


def test_forward_flops_are_exactly_two_B_P():
  for sizes, activation, bias in ((ARCHS[2], "identity", False), (ARCHS[2], "tanh", False),
                                  ((7, 5, 4, 3), "tanh", True), ((16, 1, 16), "tanh", True)):
    m = measured("forward", sizes, B, activation, bias)
    units = B * sum(sizes[1:])
    extra = m["flops"] - 2 * B * costs.weights(sizes)
    if bias:  # the bias adds: XLA on CPU counts 2 flops per entry (the add is fused into the dot)
      assert units <= extra <= 2 * units
    else:
      assert extra == 0
    assert m["transcendentals"] == (units if activation == "tanh" else 0)  # one tanh per unit


@pytest.mark.parametrize("name", LINEAR)
def test_mac_formulas_match_xla_exactly(identity_flops, name):
  offsets = {sizes: identity_flops[sizes][name] - 2 * B * costs.MACS[name](sizes) for sizes in ARCHS}
  assert len(set(offsets.values())) == 1, offsets  # the same elementwise constant for every net
  offset = next(iter(offsets.values()))
  assert 0 <= offset <= 8 * B * ARCHS[0][-1]  # a few flops per output entry: the loss and dC/dy
  for a, b in itertools.combinations(ARCHS, 2):
    assert (identity_flops[a][name] - identity_flops[b][name]
            == 2 * B * (costs.MACS[name](a) - costs.MACS[name](b)))


@pytest.mark.parametrize("name", tuple(costs.FUNCTIONS))
def test_first_layer_costs_with_nonlinear_activations(name):
  """Growing n_0 adds 2 B n_1 flops per unit for every product that touches W_1, and nothing
  elementwise: forward z_1 = W_1 x; dC/dW_1 = delta_1^T x; dC/dx = delta_1 W_1."""
  touches_W1 = {"forward": 1, "loss_value": 1, "deltas": 1, "value_and_grad": 2,
                "grads_without_delta_1": 1, "input_grad": 2, "grads_and_input_grad": 3, "lambdas": 1}
  flops = []
  for n0 in (3, 7):
    flops.append(measured(name, (n0, 5, 4, 3), B, "tanh", True)["flops"])
  assert flops[1] - flops[0] == 2 * B * 5 * (7 - 3) * touches_W1[name]
  sizes = (7, 5, 4, 3)
  assert costs.MACS[name](sizes) - costs.MACS[name]((3, 5, 4, 3)) == 5 * 4 * touches_W1[name]


def test_elementwise_work_is_linear_in_the_units():
  """With tanh and biases, flops - 2 B MACs is the elementwise work: 0 <= it <= 20 B sum n_l."""
  for sizes in ((3, 5, 4, 3), (7, 5, 4, 3), (16, 1, 16)):
    units = B * sum(sizes[1:])
    for name in ("forward", "value_and_grad", "grads_and_input_grad", "grads_without_delta_1"):
      extra = measured(name, sizes, B, "tanh", True)["flops"] - 2 * B * costs.MACS[name](sizes)
      assert 0 <= extra <= 20 * units, (sizes, name, extra)


def test_backward_to_forward_ratio():
  """backward/forward = 2 - n_1 n_0 / P without dC/dx, exactly 2 with it: in [1, 2), not 'about 2'.

  Measured, not assumed: on random architectures (identity, no biases, widths and batch >= 2)
  XLA's flops are the product flops of the formulas plus the loss's elementwise flops, to the
  flop, so the measured ratio of products is 2 - n_1 n_0 / P exactly; the formulas one might
  guess instead (2, or 2 - n_L n_{L-1} / P) are rejected on every one of them.
  """
  rng = np.random.default_rng(24)
  for _ in range(8):
    sizes = tuple(int(n) for n in rng.integers(2, 40, size=rng.integers(3, 7)))
    if sizes[0] * sizes[1] == sizes[-1] * sizes[-2]:
      continue
    batch = int(rng.integers(2, 12))
    P = costs.weights(sizes)
    fwd = measured("loss_value", sizes, batch)["flops"]
    vg = measured("value_and_grad", sizes, batch)["flops"]
    loss = costs.loss_flops(sizes, batch)
    products_fwd = fwd - loss["value"]
    products_bwd = vg - fwd - loss["gradient"]
    assert products_fwd == 2 * batch * P, sizes
    ratio = Fraction(int(products_bwd), int(products_fwd))
    assert ratio == 2 - Fraction(sizes[0] * sizes[1], P), (sizes, batch, float(ratio))
    assert 1 <= ratio < 2
    assert ratio != 2 and ratio != 2 - Fraction(sizes[-1] * sizes[-2], P)
    both = measured("grads_and_input_grad", sizes, batch)["flops"] - fwd - loss["gradient"]
    assert Fraction(int(both), int(products_fwd)) == 2  # with dC/dx = delta_1 W_1
  # Near 1 when the first layer holds most weights, near 2 when it holds few.
  assert costs.backward_macs((784, 128, 10)) / costs.weights((784, 128, 10)) < 1.02
  assert costs.backward_macs((10, 1000, 1000, 10)) / costs.weights((10, 1000, 1000, 10)) > 1.99


def test_measured_ratio_with_tanh_and_biases_is_the_formula_plus_the_elementwise_work():
  """(6, 16, 16, 8), B = 8, tanh and biases: XLA's ratio is 2.003, the formula's 1.8. The
  products are the formula's to the flop (2 B P forward, 2 B (2P - n_1 n_0) backward); the rest
  is elementwise work on the B sum_l n_l = 320 units: bias adds forward (2 flops each on CPU),
  f'(z) = sech^2 z, the Hadamard products, the bias gradients and the loss backward."""
  sizes = (6, 16, 16, 8)
  P, units = costs.weights(sizes), B * sum(sizes[1:])
  fwd = measured("forward", sizes, B, "tanh", True)["flops"]
  vg = measured("value_and_grad", sizes, B, "tanh", True)["flops"]
  products_fwd, products_bwd = 2 * B * P, 2 * B * costs.backward_macs(sizes)
  assert Fraction(products_bwd, products_fwd) == Fraction(9, 5)  # 2 - 96/480
  assert fwd - products_fwd == 2 * units  # forward: the bias add only
  elementwise_bwd = vg - fwd - products_bwd
  assert 5 * units <= elementwise_bwd <= 10 * units  # 2839 flops: about 9 per unit
  assert abs((vg - fwd) / fwd - 2.003) < 1e-3


# ---------------------------------------------------------------- memory

def _tape_numbers(params, x):
  """Numbers in the tape bpref.forward returns (its shapes, by jax.eval_shape)."""
  tape = jax.eval_shape(bpref.forward, params, x)
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tape))


def test_tape_holds_B_times_n0_plus_twice_the_units():
  for sizes, batch in (((3, 4, 2), 1), ((3, 4, 2), 8), ((7, 6, 5, 2), 5), ((16, 1, 16), 3)):
    params, x, _ = costs.problem(sizes, batch)
    assert _tape_numbers(params, x) == costs.tape_numbers(sizes, batch)
    out = measured("forward", sizes, batch)["output_bytes"]
    tape_bytes = 8 * costs.tape_numbers(sizes, batch)
    n_arrays = 2 * len(sizes) - 1
    assert tape_bytes <= out <= tape_bytes + 8 * n_arrays  # XLA adds one pointer per output array


def test_tape_scales_as_B_sqrt_L_P_not_sqrt_P():
  """Equal widths n, L layers: P = L n^2 and the tape is B (2L + 1) n = B (2L + 1) sqrt(P / L)."""
  ratios = {}
  for L, n, batch in itertools.product((1, 2, 4, 8), (4, 16), (1, 8)):
    sizes = (n,) * (L + 1)
    P = costs.weights(sizes)
    params, x, _ = costs.problem(sizes, batch)
    tape = _tape_numbers(params, x)
    assert tape == batch * (2 * L + 1) * n
    assert math.isclose(tape, batch * (2 * L + 1) * math.sqrt(P / L))
    ratios[L, n, batch] = tape / math.sqrt(P)
  # tape / sqrt(P) does not depend on n, grows like 2 B sqrt(L): the seed's "about sqrt(P)"
  # holds (up to the factor 3) only for one layer and one example.
  for L, batch in itertools.product((1, 2, 4, 8), (1, 8)):
    assert math.isclose(ratios[L, 4, batch], ratios[L, 16, batch])
    assert math.isclose(ratios[L, 4, batch], batch * (2 * L + 1) / math.sqrt(L))
  assert math.isclose(ratios[1, 4, 1], 3)
  assert ratios[8, 4, 8] > 40


def test_tape_bounds_for_any_widths():
  """2 B sqrt(P) <= tape <= (2 + 1/L) B P <= 3 B P, the upper bound reached only by all-ones nets."""
  rng = np.random.default_rng(25)
  for _ in range(500):
    sizes = tuple(int(n) for n in rng.integers(1, 300, size=rng.integers(2, 8)))
    batch = int(rng.integers(1, 64))
    P, tape, L = costs.weights(sizes), costs.tape_numbers(sizes, batch), len(sizes) - 1
    assert 2 * batch * math.sqrt(P) <= tape and tape * L <= (2 * L + 1) * batch * P
  for L in (1, 2, 3, 4):  # exhaustively over widths <= 4: equality exactly for (1, ..., 1)
    for sizes in itertools.product(range(1, 5), repeat=L + 1):
      P, tape = costs.weights(sizes), costs.tape_numbers(sizes, 1)
      assert tape * L <= (2 * L + 1) * P
      assert (tape * L == (2 * L + 1) * P) == (set(sizes) == {1}), sizes
  assert costs.tape_numbers((1, 1), 7) == 3 * 7 * costs.weights((1, 1))  # 3 B P, reached
  # The bottleneck keeps more than all the weights, but 1.5 P, not 3 P.
  params, x, _ = costs.problem((1000, 1, 1000), 1)
  assert _tape_numbers(params, x) == 3002 and costs.weights((1000, 1, 1000)) == 2000


def test_xla_backward_keeps_between_the_hidden_activations_and_the_tape():
  """XLA's temporaries for value_and_grad, batches of 16 and 32: at least a_1..a_{L-1} (needed
  by dC/dW_2..L after the forward pass ends), at most bpref's tape. (At B = 1 XLA's reported
  temp can be below the hidden activations; proofs/scaling.md.)"""
  for sizes, batch in (((64,) * 5, 16), ((32,) * 7, 32), ((100, 1, 100), 16), ((16, 64, 8, 32), 32)):
    temp = measured("value_and_grad", sizes, batch, "tanh", True)["temp_bytes"]
    hidden = 8 * batch * sum(sizes[1:-1])
    assert hidden <= temp <= 8 * costs.tape_numbers(sizes, batch), (sizes, batch, temp)


def test_lambda_recursion_costs_n_L_times_the_delta_recursion():
  """(34)'s point: carrying lambda_l (n_L rows) costs n_L (P - n_1 n_0) MACs, delta_l one row."""
  ratio = {}
  for n_L in (1, 8):
    sizes = (6, 16, 16, n_L)
    flops = {name: measured(name, sizes, B, "tanh", True)["flops"] for name in ("forward", "deltas", "lambdas")}
    units = B * sum(sizes[1:])
    assert 0 <= flops["lambdas"] - 2 * B * costs.MACS["lambdas"](sizes) <= 20 * n_L * units
    assert 0 <= flops["deltas"] - 2 * B * costs.MACS["deltas"](sizes) <= 20 * units
    ratio[n_L] = (flops["lambdas"] - flops["forward"]) / (flops["deltas"] - flops["forward"])
  assert costs.MACS["lambdas"]((6, 16, 16, 1)) == costs.MACS["deltas"]((6, 16, 16, 1))
  assert 0.9 <= ratio[1] <= 1.1  # one output: the same work
  assert ratio[8] >= 5  # eight outputs: the lambda recursion is several times the delta one
