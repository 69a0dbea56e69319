"""Section 2.4 of the seed, measured: multiply-add counts and the memory of the tape.

Exact multiply-add (MAC) counts per example, for sizes (n_0, ..., n_L) and
P = sum_l n_l n_{l-1} weights (proofs/scaling.md derives each one):

  forward                      P
  deltas delta_L..delta_1      P - n_1 n_0          (delta_L needs no product)
  deltas without delta_1       P - n_1 n_0 - n_2 n_1
  weight gradients             P                    (one outer product per layer)
  input gradient               n_1 n_0              (delta_1 W_1)
  lambdas                      n_L (P - n_1 n_0)    (a Jacobian: n_L rows at a time)

XLA reports flops = 2 x MACs for a matmul, plus one flop per elementwise
arithmetic operation (transcendentals are counted apart), so for a batch of B
the flops of a jitted function are 2 B MACs + an elementwise term linear in B n_l.

Run ``python proofs/costs.py`` for the tables of proofs/scaling.md.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

import bpref

LOSS = "squared_error"


# ---------------------------------------------------------------- exact counts

def weights(sizes) -> int:
  """P = sum_l n_l n_{l-1}."""
  return sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def _first(sizes) -> int:
  return sizes[1] * sizes[0]


def _second(sizes) -> int:
  return sizes[2] * sizes[1] if len(sizes) > 2 else 0


MACS = {
    # name: (function of sizes) -> multiply-adds per example
    "forward": lambda s: weights(s),
    "loss_value": lambda s: weights(s),
    "deltas": lambda s: weights(s) + (weights(s) - _first(s)),
    "value_and_grad": lambda s: weights(s) + (weights(s) - _first(s)) + weights(s),
    "grads_without_delta_1": lambda s: (weights(s) + (weights(s) - _first(s) - _second(s))
                                        + (weights(s) - _first(s))),
    "input_grad": lambda s: weights(s) + (weights(s) - _first(s)) + _first(s),
    "grads_and_input_grad": lambda s: weights(s) + (weights(s) - _first(s)) + weights(s) + _first(s),
    "lambdas": lambda s: weights(s) + s[-1] * (weights(s) - _first(s)),
}
"""MACs per example of each function of ``FUNCTIONS`` (forward pass included)."""


def backward_macs(sizes, *, input_grad: bool = False, first_delta: bool = True) -> int:
  """MACs of the backward pass alone: deltas, then weight gradients, optionally dC/dx.

  Without delta_1 (layer 1 frozen) neither delta_2 W_2 nor the gradient of W_1 is formed.
  """
  P, first, second = weights(sizes), _first(sizes), _second(sizes)
  if not first_delta:
    if input_grad:
      raise ValueError("the input gradient delta_1 W_1 needs delta_1")
    return (P - first - second) + (P - first)
  return (P - first) + P + (first if input_grad else 0)


def loss_flops(sizes, batch: int) -> dict:
  """XLA's elementwise flops of the squared-error loss (reduction "sum") on the B n_L outputs.

  C = sum (t - y)^2: B n_L subtractions, B n_L squares, B n_L - 1 additions; dC/dy = -2 (t - y):
  2 flops per output. With identity activations and no biases this is all the elementwise
  work there is, so for every architecture whose widths and batch are >= 2 (XLA counts a
  product with a dimension 1 as elementwise work, not as a dot):
    flops(loss_value)     = 2 B P + loss_flops["value"]
    flops(value_and_grad) = flops(loss_value) + 2 B backward_macs + loss_flops["gradient"].
  """
  outputs = batch * sizes[-1]
  return {"value": 3 * outputs - 1, "gradient": 2 * outputs}


def tape_numbers(sizes, batch: int) -> int:
  """Numbers in bpref's tape: z_1..z_L and a_0..a_L, B (n_0 + 2 sum_{l>=1} n_l)."""
  return batch * (sizes[0] + 2 * sum(sizes[1:]))


# ---------------------------------------------------------------- measured by XLA

FUNCTIONS = {
    "forward": lambda p, x, t: bpref.forward(p, x),
    "loss_value": lambda p, x, t: bpref.loss_value(p, x, t, LOSS, "sum"),
    "deltas": lambda p, x, t: bpref.deltas(p, x, t, LOSS, "sum"),
    "value_and_grad": lambda p, x, t: bpref.value_and_grad(p, x, t, LOSS, "sum"),
    "grads_without_delta_1": lambda p, x, t: _without_first(bpref.value_and_grad(p, x, t, LOSS, "sum")),
    "input_grad": lambda p, x, t: bpref.input_grad(p, x, t, LOSS, "sum"),
    "grads_and_input_grad": lambda p, x, t: _grads_and_input_grad(p, x, t),
    "lambdas": lambda p, x, t: bpref.lambdas(p, x),
}
"""bpref's functions as jitted by users; XLA drops what a function does not return."""


def _grads_and_input_grad(params, x, t):
  # One backward pass for the weight gradients and dC/dx = delta_1 W_1, from bpref's public
  # stages (two calls of value_and_grad and input_grad would redo the deltas).
  tape = bpref.forward(params, x)
  value, delta_L = bpref.output_delta(params, tape, t, LOSS, "sum")
  deltas = bpref.backward(params, tape, delta_L)
  grads = bpref.param_grads(params, tape, deltas)
  dx = jnp.matmul(deltas[0], params[0].W, precision=bpref.DEFAULT_PRECISION)  # dC/dx = delta_1 W_1
  return value, grads, dx


def _without_first(value_and_grads):
  value, grads = value_and_grads
  return value, grads[1:]


def problem(sizes, batch, activation="identity", bias=False, dtype=jnp.float64, seed=0):
  """A random network (W_l ~ N(0, 1/n_{l-1}), b_l ~ N(0, 0.1^2)) with inputs and targets."""
  rng = np.random.default_rng(seed)
  weights_ = [rng.normal(size=(m, n)) / np.sqrt(n) for n, m in zip(sizes[:-1], sizes[1:])]
  biases = [rng.normal(size=(m,)) * 0.1 for m in sizes[1:]] if bias else None
  params = bpref.from_arrays([jnp.asarray(W, dtype) for W in weights_],
                             None if biases is None else [jnp.asarray(b, dtype) for b in biases],
                             activation)
  x = jnp.asarray(rng.normal(size=(batch, sizes[0])), dtype)
  t = jnp.asarray(rng.normal(size=(batch, sizes[-1])), dtype)
  return params, x, t


def measure(name, params, x, t) -> dict:
  """XLA's cost and memory analysis of ``FUNCTIONS[name]`` compiled for these shapes.

  Always compiled for the CPU backend, so that the counts do not depend on the machine.
  """
  cpu = jax.devices("cpu")[0]
  params, x, t = jax.device_put((params, x, t), cpu)
  with jax.default_device(cpu):
    compiled = jax.jit(FUNCTIONS[name]).lower(params, x, t).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  memory = compiled.memory_analysis()
  return dict(flops=float(cost.get("flops", 0.0)),
              transcendentals=float(cost.get("transcendentals", 0.0)),
              output_bytes=int(memory.output_size_in_bytes),
              temp_bytes=int(memory.temp_size_in_bytes))


# ---------------------------------------------------------------- tables

RATIO_ARCHITECTURES = ((784, 128, 10), (784, 512, 512, 10), (32, 64, 64, 64, 64, 1),
                       (1000, 10, 10, 1), (10, 1000, 1000, 10), (256,) * 9)


def _ratio_table(batch=32):
  print(f"backward/forward cost, B = {batch}, tanh with biases, float64 (XLA CPU flops)")
  print(f"{'sizes':<28}{'P':>9}{'fwd flops':>12}{'bwd flops':>12}{'measured':>10}"
        f"{'2-n1n0/P':>10}{'+dC/dx':>8}{'2':>5}")
  for sizes in RATIO_ARCHITECTURES:
    params, x, t = problem(sizes, batch, "tanh", bias=True)
    fwd = measure("loss_value", params, x, t)["flops"]
    vg = measure("value_and_grad", params, x, t)["flops"]
    both = measure("grads_and_input_grad", params, x, t)["flops"]
    P = weights(sizes)
    print(f"{str(sizes):<28}{P:>9}{fwd:>12.0f}{vg - fwd:>12.0f}{(vg - fwd) / fwd:>10.4f}"
          f"{backward_macs(sizes) / P:>10.4f}{(both - fwd) / fwd:>8.4f}"
          f"{backward_macs(sizes, input_grad=True) / P:>5.0f}")


def _memory_table():
  print("memory of the tape (numbers) against the weights P, float64")
  print(f"{'sizes':<24}{'B':>4}{'P':>9}{'sqrt P':>8}{'tape':>9}{'tape/sqrtP':>11}"
        f"{'B(2L+1)/sqrtL':>14}{'XLA temp/8':>11}")
  for sizes, batch in (((64,) * 2, 1), ((64,) * 5, 1), ((64,) * 9, 1), ((64,) * 5, 32),
                       ((64,) * 9, 32), ((256,) * 5, 32), ((1000, 1, 1000), 1), ((1000, 1, 1000), 32)):
    params, x, t = problem(sizes, batch, "tanh", bias=True)
    tape = sum(int(np.size(v)) for v in jax.tree_util.tree_leaves(bpref.forward(params, x)))
    temp = measure("value_and_grad", params, x, t)["temp_bytes"] // 8
    P = weights(sizes)
    L = len(sizes) - 1
    equal = len(set(sizes)) == 1
    law = f"{batch * (2 * L + 1) / math.sqrt(L):.2f}" if equal else "-"
    print(f"{str(sizes):<24}{batch:>4}{P:>9}{math.sqrt(P):>8.1f}{tape:>9}{tape / math.sqrt(P):>11.2f}"
          f"{law:>14}{temp:>11}")


if __name__ == "__main__":
  jax.config.update("jax_enable_x64", True)
  _ratio_table()
  print()
  _memory_table()
