"""The embedding op kind on candidates written the ways people write them, right and wrong.

Right: llm.c's ``encoder_backward`` loops in NumPy, ``np.add.at`` vectorised, torch's autograd
of ``F.embedding`` plus a position table, a ``torch.autograd.Function`` taking (ids, wte, wpe)
and one built around the ids taking (wte, wpe), and a ``jax.custom_vjp`` rule. Wrong: each
classic mistake of proofs/layers.md, which must fail with the finding that names it.
"""

import numpy as np
import pytest

from bpref import compilation
from bpref.oracle.ops import check_op


def loops(ids, wte, wpe, dout):
  """llm.c's encoder_backward, loop for loop: dwte[ix] += dout[b, t]; dwpe[t] += dout[b, t]."""
  dwte, dwpe = np.zeros_like(wte), np.zeros_like(wpe)
  B, T = ids.shape
  for b in range(B):
    for t in range(T):
      ix = ids[b, t]
      dwte[ix] += dout[b, t]
      dwpe[t] += dout[b, t]
  return dwte, dwpe


def add_at(ids, wte, wpe, dout):
  dwte = np.zeros_like(wte)
  np.add.at(dwte, ids, dout)
  dwpe = np.zeros_like(wpe)
  dwpe[:ids.shape[1]] = dout.sum(axis=0)
  return dwte, dwpe


def torch_autograd(ids, wte, wpe, dout):
  import torch

  tok, pos = (torch.tensor(a, requires_grad=True) for a in (wte, wpe))
  positions = torch.arange(ids.shape[1])
  out = torch.nn.functional.embedding(torch.from_numpy(ids), tok) + \
      torch.nn.functional.embedding(positions, pos)[None]
  out.backward(torch.tensor(dout))
  return tok.grad.numpy(), pos.grad.numpy()


def _torch_backward(ids, dout, V, P):
  import torch

  C = dout.shape[-1]
  dwte = torch.zeros((V, C), dtype=dout.dtype).index_add_(0, ids.reshape(-1), dout.reshape(-1, C))
  dwpe = torch.zeros((P, C), dtype=dout.dtype)
  dwpe[:ids.shape[1]] = dout.sum(0)
  return dwte, dwpe


def _torch_function():
  import torch

  class Embedding(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids, wte, wpe):  # ids are not differentiable: backward returns None for them
      ctx.save_for_backward(ids)
      ctx.tables = (wte.shape[0], wpe.shape[0])
      return wte[ids] + wpe[:ids.shape[1]][None]

    @staticmethod
    def backward(ctx, dout):
      (ids,) = ctx.saved_tensors
      return (None,) + _torch_backward(ids, dout, *ctx.tables)

  return Embedding


def torch_function_of_the_tables(ids, wte, wpe, dout):
  """A Function whose forward takes the tables alone, the ids held by the instance's closure."""
  import torch

  index = torch.from_numpy(ids)

  class Lookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, wte, wpe):
      ctx.tables = (wte.shape[0], wpe.shape[0])
      return wte[index] + wpe[:index.shape[1]][None]

    @staticmethod
    def backward(ctx, dout):
      return _torch_backward(index, dout, *ctx.tables)

  tok, pos = (torch.tensor(a, requires_grad=True) for a in (wte, wpe))
  Lookup.apply(tok, pos).backward(torch.tensor(dout))
  return tok.grad.numpy(), pos.grad.numpy()


def _custom_vjp():
  import jax
  import jax.numpy as jnp

  @jax.custom_vjp
  def embedding(ids, wte, wpe):
    return jnp.take(wte, ids, axis=0) + wpe[None, :ids.shape[1]]

  def fwd(ids, wte, wpe):
    return embedding(ids, wte, wpe), (ids, jnp.zeros_like(wte), jnp.zeros_like(wpe))

  def bwd(res, dout):
    ids, zero_wte, zero_wpe = res
    return None, zero_wte.at[ids].add(dout), zero_wpe.at[:ids.shape[1]].set(dout.sum(0))

  embedding.defvjp(fwd, bwd)
  return embedding


RIGHT = {"loops": lambda: loops, "add_at": lambda: add_at, "torch_autograd": lambda: torch_autograd,
         "torch_function": _torch_function,
         "torch_function_of_the_tables": lambda: torch_function_of_the_tables}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("way", sorted(RIGHT))
def test_a_right_embedding_passes(way, dtype):
  if way.startswith("torch"):
    pytest.importorskip("torch")
  report = check_op("embedding", RIGHT[way](), dtype=dtype, examples=20)
  assert report.verdict == "pass", report.text()
  assert report.cases >= 20
  if way == "torch_function":
    assert report.forward_checked == report.cases  # its forward out = wte[ids] + wpe, checked too


@pytest.mark.parametrize("dtype", [pytest.param("float64", marks=pytest.mark.deep), "float32"])
def test_a_custom_vjp_embedding_passes(dtype):
  # jit compiles the rule once per shape (7 s a dtype): few shapes, float64 in the deep tier
  report = check_op("embedding", _custom_vjp(), dtype=dtype, examples=5, max_batch=2, max_width=3)
  assert report.verdict == "pass", report.text()
  assert report.forward_checked == report.cases


@pytest.mark.deep
@pytest.mark.parametrize("seed", range(1, 5))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("way", ["loops", "add_at", "torch_autograd"])
def test_a_right_embedding_passes_at_every_seed(way, dtype, seed):
  if way.startswith("torch"):
    pytest.importorskip("torch")
  report = check_op("embedding", RIGHT[way](), dtype=dtype, seed=seed, examples=60)
  assert report.verdict == "pass", report.text()


def _with(dwte=None, dwpe=None):
  """np.add.at's solution with one output replaced by f(ids, wte, wpe, dout)."""
  def candidate(ids, wte, wpe, dout):
    out = list(add_at(ids, wte, wpe, dout))
    for i, f in enumerate((dwte, dwpe)):
      if f is not None:
        out[i] = np.asarray(f(ids, wte, wpe, dout), wte.dtype)
    return tuple(out)
  return candidate


def _assigned(ids, wte, wpe, dout):
  dwte = np.zeros_like(wte)
  dwte[ids] = dout  # NumPy's fancy assignment: the last of a repeated token's rows wins
  return dwte


def _buffered(ids, wte, wpe, dout):
  dwte = np.zeros_like(wte)
  dwte[ids] += dout  # buffered: as the assignment above, not np.add.at
  return dwte


def _first_wins(ids, wte, wpe, dout):
  dwte = np.zeros_like(wte)
  seen = set()
  for b in range(ids.shape[0]):
    for t in range(ids.shape[1]):
      if ids[b, t] not in seen:
        seen.add(ids[b, t])
        dwte[ids[b, t]] = dout[b, t]
  return dwte


def _swapped(ids, wte, wpe, dout):
  dwte, dwpe = add_at(ids, wte, wpe, dout)
  return dwpe, dwte


def _indices_swapped(ids, wte, wpe, dout):
  """dwte indexed by position and dwpe by token: runs only where V >= T and P >= V."""
  dwte, dwpe = np.zeros_like(wte), np.zeros_like(wpe)
  for b in range(ids.shape[0]):
    for t in range(ids.shape[1]):
      dwte[t] += dout[b, t]
      dwpe[ids[b, t]] += dout[b, t]
  return dwte, dwpe


BUGS = {
    "repeated_token_overwritten": _with(dwte=_assigned),
    "repeated_token_overwritten/buffered": _with(dwte=_buffered),
    "repeated_token_overwritten/first": _with(dwte=_first_wins),
    "position_sum_missing": _with(dwpe=lambda ids, wte, wpe, dout: dout[0]),
    "position_sum_missing/last": _with(dwpe=lambda ids, wte, wpe, dout: dout[-1]),
    "token_position_swapped": _swapped,
    "token_position_swapped/indices": _indices_swapped,
}


@pytest.mark.parametrize("seed", range(10))  # seeds 1 to 9: the sweep tier
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("bug", sorted(BUGS))
def test_each_classic_embedding_bug_fails_with_its_name(bug, dtype, seed):
  report = check_op("embedding", BUGS[bug], dtype=dtype, seed=seed, examples=20)
  assert report.verdict == "fail"
  assert report.diagnosis[0].code == bug.split("/")[0], report.text()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_batch_mean_of_the_position_gradient_is_a_factor_one_over_B(dtype):
  report = check_op("embedding", _with(dwpe=lambda ids, wte, wpe, dout: dout.mean(axis=0)),
                    dtype=dtype, examples=20)
  assert report.verdict == "fail"
  assert report.diagnosis[0].code == "constant_factor", report.text()
  assert "1/B" in report.diagnosis[0].summary


def test_a_token_table_not_zeroed_first_fails():
  # the gradient accumulated onto a copy of wte: the rows of absent tokens are wrong, and the others
  def not_zeroed(ids, wte, wpe, dout):
    dwte = wte.copy()
    np.add.at(dwte, ids, dout)
    return dwte, add_at(ids, wte, wpe, dout)[1]

  report = check_op("embedding", not_zeroed, examples=10)
  assert report.verdict == "fail" and report.kind == "numeric"


def test_the_search_reaches_repeated_tokens_and_the_ends_of_the_table():
  from bpref.oracle.ops import _search, kinds

  spec = kinds.make_spec("embedding")
  record = kinds.of(spec)
  cases = [record.case(spec, label) for label in _search.probes(spec)]
  ids = [c.arrays["ids"] for c in cases]
  V = [c.arrays["wte"].shape[0] for c in cases]
  assert any(i.size > 1 and np.all(i == i.flat[0]) for i in ids)  # one token everywhere
  assert any(v > 2 and np.any(i == 0) and np.any(i == v - 1) for i, v in zip(ids, V))
  assert any(v == 1 for v in V) and any(i.shape[1] == 1 for i in ids)
  assert any(np.bincount(i.astype(int).ravel(), minlength=v).min() == 0 for i, v in zip(ids, V))


def test_a_default_search_compiles_few_programs():
  with compilation.count() as seen:
    assert check_op("embedding", add_at, seed=7).verdict == "pass"
  assert seen.compilations <= 4


def test_options_are_checked():
  with pytest.raises(ValueError, match="takes no name"):
    check_op("embedding", add_at, name="relu")
  with pytest.raises(ValueError, match="layout='btc' is not valid for kind 'embedding'"):
    check_op("embedding", add_at, layout="btc")
