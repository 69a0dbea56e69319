"""The attention op kind on candidates written the ways people write them, right and wrong.

Right: llm.c's ``attention_forward`` and ``attention_backward`` loops ported to NumPy, a
vectorised course solution, torch's autograd of ``scaled_dot_product_attention``, a
``torch.autograd.Function`` with a handwritten backward and a ``jax.custom_vjp`` rule, in both
layouts (llm.c's qkv (B, T, 3C), PyTorch's q, k, v (B, heads, T, hs)). Wrong: each classic
mistake of proofs/attention.md section 5, planted in the course solution, which must fail
with the finding that names it.
"""

import math

import numpy as np
import pytest

from bpref.oracle.ops import check_op, expected

HEADS = 2
"""The heads a framework function in the llmc layout fixes for itself (fn(qkv) takes no heads)."""


# ---------------------------------------------------------------- right candidates, llmc layout

def llmc_forward(inp, NH, start=-math.inf):
  """llm.c's attention_forward: per (b, t, h) the scores, their max, exp, normalise, P v.

  llm.c starts the running max at -10000 (``start=-10000.0``); started there, every weight of a
  row whose scores all lie below about -10100 underflows to 0 (the row then attends nowhere).
  The right candidate starts it at -inf."""
  B, T, C3 = inp.shape
  C, dt = C3 // 3, inp.dtype.type
  hs = C // NH
  scale = dt(1.0 / math.sqrt(hs))
  out, att = np.zeros((B, T, C), inp.dtype), np.zeros((B, NH, T, T), inp.dtype)
  preatt = np.zeros((B, NH, T, T), inp.dtype)
  for b in range(B):
    for t in range(T):
      for h in range(NH):
        query_t = inp[b, t, h * hs:(h + 1) * hs]
        maxval = dt(start)
        for t2 in range(t + 1):
          key_t2 = inp[b, t2, C + h * hs:C + (h + 1) * hs]
          val = dt(0)
          for i in range(hs):
            val += query_t[i] * key_t2[i]
          val *= scale
          maxval = max(maxval, val)
          preatt[b, h, t, t2] = val
        expsum = dt(0)
        for t2 in range(t + 1):
          expv = np.exp(preatt[b, h, t, t2] - maxval)
          expsum += expv
          att[b, h, t, t2] = expv
        expsum_inv = dt(0) if expsum == 0 else dt(1) / expsum
        for t2 in range(T):
          att[b, h, t, t2] = att[b, h, t, t2] * expsum_inv if t2 <= t else dt(0)
        out_bth = out[b, t, h * hs:(h + 1) * hs]
        for t2 in range(t + 1):
          out_bth += att[b, h, t, t2] * inp[b, t2, 2 * C + h * hs:2 * C + (h + 1) * hs]
  return out, att


def llmc_backward(dout, inp, att, NH):
  """llm.c's attention_backward: through P v, then the softmax, then q k^T with the scale."""
  B, T, C3 = inp.shape
  C, dt = C3 // 3, inp.dtype.type
  hs = C // NH
  scale = dt(1.0 / math.sqrt(hs))
  dinp = np.zeros_like(inp)
  datt, dpreatt = np.zeros_like(att), np.zeros_like(att)
  for b in range(B):
    for t in range(T):
      for h in range(NH):
        att_bth, datt_bth, dpreatt_bth = att[b, h, t], datt[b, h, t], dpreatt[b, h, t]
        dquery_t = dinp[b, t, h * hs:(h + 1) * hs]
        query_t = inp[b, t, h * hs:(h + 1) * hs]
        dout_bth = dout[b, t, h * hs:(h + 1) * hs]
        for t2 in range(t + 1):  # backward pass 4, through the value accumulation
          value_t2 = inp[b, t2, 2 * C + h * hs:2 * C + (h + 1) * hs]
          dvalue_t2 = dinp[b, t2, 2 * C + h * hs:2 * C + (h + 1) * hs]
          for i in range(hs):
            datt_bth[t2] += value_t2[i] * dout_bth[i]
            dvalue_t2[i] += att_bth[t2] * dout_bth[i]
        for t2 in range(t + 1):  # backward passes 2 and 3, the softmax
          for t3 in range(t + 1):
            indicator = dt(1) if t2 == t3 else dt(0)
            local_derivative = att_bth[t2] * (indicator - att_bth[t3])
            dpreatt_bth[t3] += local_derivative * datt_bth[t2]
        for t2 in range(t + 1):  # backward pass 1, the query @ key matmul
          key_t2 = inp[b, t2, C + h * hs:C + (h + 1) * hs]
          dkey_t2 = dinp[b, t2, C + h * hs:C + (h + 1) * hs]
          for i in range(hs):
            dquery_t[i] += key_t2[i] * dpreatt_bth[t2] * scale
            dkey_t2[i] += query_t[i] * dpreatt_bth[t2] * scale
  return dinp


def llmc(qkv, dout, heads):
  _, att = llmc_forward(qkv, heads)
  return llmc_backward(dout, qkv, att, heads)


def _split(x, heads):  # (B, T, C) -> (B, heads, T, hs)
  B, T, C = x.shape
  return x.reshape(B, T, heads, C // heads).transpose(0, 2, 1, 3)


def _merge(x):  # (B, heads, T, hs) -> (B, T, C)
  B, H, T, hs = x.shape
  return x.transpose(0, 2, 1, 3).reshape(B, T, H * hs)


def course(qkv, dout, heads, mistake=None):
  """The vectorised course solution; ``mistake`` plants one classic bug (the codes of the
  attention kind's bug models)."""
  dt = qkv.dtype.type
  C = qkv.shape[-1] // 3
  T = qkv.shape[1]
  hs = C // heads

  def split(x):
    if mistake == "head_reshape":  # channels as (hs, heads): head h gets h, h + heads, ...
      B, T, _ = x.shape
      return x.reshape(B, T, hs, heads).transpose(0, 3, 1, 2)
    return _split(x, heads)

  def merge(x):
    if mistake == "head_reshape":
      B, H, T, hs = x.shape
      return x.transpose(0, 2, 3, 1).reshape(B, T, H * hs)
    return _merge(x)

  q, k, v = (split(qkv[..., i * C:(i + 1) * C]) for i in range(3))
  dO = split(dout)
  scale = dt(1.0 if mistake == "scale_missing" else 1.0 / math.sqrt(hs))
  causal = np.tril(np.ones((T, T), dtype=bool))
  S = q @ k.swapaxes(-1, -2) * dt(1.0 / math.sqrt(hs))
  if mistake in ("mask_after_softmax", "future_leak"):
    E = np.exp(S - S.max(-1, keepdims=True))
    full = E / E.sum(-1, keepdims=True)
  S = np.where(causal, S, -np.inf)
  E = np.exp(S - S.max(-1, keepdims=True))
  P = E / E.sum(-1, keepdims=True)
  if mistake == "mask_after_softmax":
    P = np.where(causal, full, dt(0))
  dv = P.swapaxes(-1, -2) @ dO
  dP = dO @ v.swapaxes(-1, -2)
  if mistake == "softmax_jacobian_missing":
    dS = np.where(causal, dP, dt(0))
  elif mistake == "softmax_jacobian_diagonal":
    dS = P * (1 - P) * dP
  elif mistake == "mask_after_softmax":
    g = np.where(causal, dP, dt(0))
    dS = full * (g - (g * full).sum(-1, keepdims=True))
  elif mistake == "future_leak":
    dS = full * (dP - (dP * full).sum(-1, keepdims=True))
  else:
    dS = P * (dP - (dP * P).sum(-1, keepdims=True))
  dq = (dS.swapaxes(-1, -2) if mistake == "transposed" else dS) @ k * scale
  dk = dS.swapaxes(-1, -2) @ q * scale
  if mistake == "k_v_swapped":
    dk, dv = dv, dk
  return np.concatenate([merge(dq), merge(dk), merge(dv)], axis=-1).astype(qkv.dtype)


def torch_sdpa(qkv, dout, heads):
  import torch

  x = torch.tensor(qkv, requires_grad=True)
  B, T, C3 = qkv.shape
  q, k, v = (t.view(B, T, heads, -1).transpose(1, 2) for t in x.split(C3 // 3, dim=2))  # nanoGPT's
  y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
  y.transpose(1, 2).contiguous().view(B, T, C3 // 3).backward(torch.tensor(dout))
  return x.grad.numpy()


# ---------------------------------------------------------------- right candidates, torch layout

def torch_layout(fn):
  """A candidate of the llmc layout called with PyTorch's q, k, v, dout (B, heads, T, hs)."""
  def candidate(q, k, v, dout):
    heads, C = q.shape[1], q.shape[1] * q.shape[3]
    dqkv = fn(np.concatenate([_merge(q), _merge(k), _merge(v)], axis=-1), _merge(dout), heads)
    return tuple(_split(dqkv[..., i * C:(i + 1) * C], heads) for i in range(3))
  return candidate


def torch_sdpa_qkv(q, k, v, dout):
  import torch

  q, k, v = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
  torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).backward(
      torch.tensor(dout))
  return q.grad.numpy(), k.grad.numpy(), v.grad.numpy()


def _torch_function(layout):
  import torch

  def attend(q, k, v):
    T, hs = q.shape[-2:]
    S = q @ k.transpose(-1, -2) / math.sqrt(hs)
    S = S.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool)), float("-inf"))
    return torch.softmax(S, dim=-1)

  def grads(q, k, v, P, dO):
    hs = q.shape[-1]
    dv = P.transpose(-1, -2) @ dO
    dP = dO @ v.transpose(-1, -2)
    dS = P * (dP - (dP * P).sum(-1, keepdim=True))
    return dS @ k / math.sqrt(hs), dS.transpose(-1, -2) @ q / math.sqrt(hs), dv

  class Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
      P = attend(q, k, v)
      ctx.save_for_backward(q, k, v, P)
      return P @ v

    @staticmethod
    def backward(ctx, dO):
      return grads(*ctx.saved_tensors, dO)

  def split(x):
    B, T, C = x.shape
    return x.view(B, T, HEADS, C // HEADS).transpose(1, 2)

  def merge(x):
    B, H, T, hs = x.shape
    return x.transpose(1, 2).reshape(B, T, H * hs)

  class AttentionQKV(torch.autograd.Function):  # fn(qkv), its heads its own
    @staticmethod
    def forward(ctx, qkv):
      q, k, v = (split(t) for t in qkv.chunk(3, dim=-1))
      P = attend(q, k, v)
      ctx.save_for_backward(q, k, v, P)
      return merge(P @ v)

    @staticmethod
    def backward(ctx, dout):
      return torch.cat([merge(g) for g in grads(*ctx.saved_tensors, split(dout))], dim=-1)

  return AttentionQKV if layout == "llmc" else Attention


def _custom_vjp(layout):
  import jax
  import jax.numpy as jnp

  def fwd(q, k, v):
    T, hs = q.shape[-2:]
    S = q @ jnp.swapaxes(k, -1, -2) / math.sqrt(hs)
    S = jnp.where(jnp.tril(jnp.ones((1, 1, T, T), dtype=bool)), S, -jnp.inf)
    P = jax.nn.softmax(S, axis=-1)
    return P @ v, (q, k, v, P)

  def bwd(res, dO):
    q, k, v, P = res
    hs = q.shape[-1]
    dP = dO @ jnp.swapaxes(v, -1, -2)
    dS = P * (dP - jnp.sum(dP * P, axis=-1, keepdims=True))
    return (dS @ k / math.sqrt(hs), jnp.swapaxes(dS, -1, -2) @ q / math.sqrt(hs),
            jnp.swapaxes(P, -1, -2) @ dO)

  @jax.custom_vjp
  def attention(q, k, v):
    return fwd(q, k, v)[0]

  attention.defvjp(fwd, bwd)
  if layout == "torch":
    return attention

  def split(x):
    B, T, C = x.shape
    return jnp.transpose(x.reshape(B, T, HEADS, C // HEADS), (0, 2, 1, 3))

  def merge(x):
    B, H, T, hs = x.shape
    return jnp.transpose(x, (0, 2, 1, 3)).reshape(B, T, H * hs)

  @jax.custom_vjp
  def attention_qkv(qkv):  # fn(qkv), its heads its own
    return merge(attention(*(split(t) for t in jnp.split(qkv, 3, axis=-1))))

  def fwd_qkv(qkv):
    out, res = fwd(*(split(t) for t in jnp.split(qkv, 3, axis=-1)))
    return merge(out), res

  def bwd_qkv(res, dout):
    return (jnp.concatenate([merge(g) for g in bwd(res, split(dout))], axis=-1),)

  attention_qkv.defvjp(fwd_qkv, bwd_qkv)
  return attention_qkv


RIGHT = {  # name: layout -> candidate
    "llmc_loops": lambda layout: llmc if layout == "llmc" else torch_layout(llmc),
    "course": lambda layout: course if layout == "llmc" else torch_layout(course),
    "torch_sdpa": lambda layout: torch_sdpa if layout == "llmc" else torch_sdpa_qkv,
    "torch_function": _torch_function,
    "custom_vjp": _custom_vjp,
}
FIXED_HEADS = ("torch_function", "custom_vjp")
"""The ways whose llmc form is fn(qkv) with its own heads: checked with heads=HEADS."""


def _check(way, layout, **options):
  if way.startswith("torch"):
    pytest.importorskip("torch")
  heads = HEADS if layout == "llmc" and way in FIXED_HEADS else 0
  return check_op("attention", RIGHT[way](layout), layout=layout, heads=heads, **options)


def _ways():
  """(way, layout, dtype) of every right candidate; a custom_vjp function compiles each shape
  it meets (about 120 XLA compilations a check), so the fast tier keeps one of its four."""
  for way in sorted(RIGHT):
    for layout in ("llmc", "torch"):
      for dtype in ("float64", "float32"):
        slow = way == "custom_vjp" and (layout, dtype) != ("llmc", "float32")
        yield pytest.param(way, layout, dtype, marks=[pytest.mark.deep] if slow else [])


@pytest.mark.parametrize("way, layout, dtype", list(_ways()))
def test_a_right_attention_passes(way, layout, dtype):
  report = _check(way, layout, dtype=dtype, examples=20)
  assert report.verdict == "pass", report.text()
  assert report.cases >= 20


@pytest.mark.deep
@pytest.mark.parametrize("seed", range(1, 5))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("way", sorted(RIGHT))
def test_a_right_attention_passes_at_every_seed_and_layout(way, dtype, seed):
  for layout in ("llmc", "torch"):
    report = _check(way, layout, dtype=dtype, seed=seed)
    assert report.verdict == "pass", report.text()


# ---------------------------------------------------------------- the classic bugs

BUGS = ("softmax_jacobian_missing", "softmax_jacobian_diagonal", "mask_after_softmax",
        "future_leak", "scale_missing", "k_v_swapped", "transposed", "head_reshape")
"""proofs/attention.md section 5, by the attention kind's finding codes."""


@pytest.mark.parametrize("seed", range(10))  # seeds 1 to 9: the sweep tier
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("bug", BUGS)
def test_each_classic_attention_bug_fails_with_its_name(bug, dtype, seed):
  def candidate(qkv, dout, heads):
    return course(qkv, dout, heads, mistake=bug)

  report = check_op("attention", candidate, dtype=dtype, seed=seed, examples=20)
  assert report.verdict == "fail"
  assert report.diagnosis[0].code == bug, report.text()


@pytest.mark.parametrize("bug", ["future_leak", "k_v_swapped", "scale_missing"])
def test_a_bug_is_named_in_the_torch_layout_too(bug):
  report = check_op("attention", torch_layout(lambda qkv, dout, heads: course(qkv, dout, heads, bug)),
                    layout="torch", examples=20)
  assert report.verdict == "fail"
  assert report.diagnosis[0].code == bug, report.text()


def test_a_candidate_with_heads_of_its_own_fails_a_search_over_heads():
  report = check_op("attention", lambda qkv, dout, heads: course(qkv, dout, 1), examples=10)
  assert report.verdict == "fail"
  assert check_op("attention", lambda qkv, dout, heads: course(qkv, dout, 2), heads=2,
                  examples=10).verdict == "pass"


# ---------------------------------------------------------------- options and layouts

def test_options_are_checked():
  with pytest.raises(ValueError, match="layout='in_out' is not valid for kind 'attention'"):
    check_op("attention", course, layout="in_out")
  with pytest.raises(ValueError, match="heads must be an integer >= 0; got -1"):
    check_op("attention", course, heads=-1)
  with pytest.raises(ValueError, match="takes no name"):
    check_op("attention", course, name="relu")


def test_expected_converts_both_layouts():
  rng = np.random.default_rng(0)
  B, T, H, hs = 2, 3, 2, 2
  qkv, dout = rng.normal(size=(B, T, 3 * H * hs)), rng.normal(size=(B, T, H * hs))
  dqkv = expected("attention", qkv=qkv, dout=dout, heads=H)["dqkv"]
  assert np.max(np.abs(dqkv - course(qkv, dout, H))) < 1e-12
  q, k, v = (_split(qkv[..., i * H * hs:(i + 1) * H * hs], H) for i in range(3))
  found = expected("attention", layout="torch", qkv=np.stack([q, k, v]), dout=_split(dout, H))
  for i, name in enumerate(("dq", "dk", "dv")):
    assert np.max(np.abs(found[name] - _split(dqkv[..., i * H * hs:(i + 1) * H * hs], H))) < 1e-12
  with pytest.raises(ValueError, match="pass heads=H"):
    expected("attention", qkv=qkv, dout=dout)


def test_the_reproducer_reruns_the_minimal_case():
  report = check_op("attention", lambda qkv, dout, heads: course(qkv, dout, heads, "future_leak"),
                    heads=2, examples=10)
  assert report.verdict == "fail"
  scope = {}
  exec(report.reproducer.replace("print(\"bpref:\", ", "found = ("), scope)
  assert np.allclose(scope["found"]["dqkv"], np.asarray(report.case["bpref"]["dqkv"]))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_llmcs_running_max_started_at_minus_10000_is_found_where_every_score_is_below_it(dtype):
  # llm.c's attention_forward starts its running max at -10000: a row whose scores all lie below
  # about -10100 gets weights that underflow to 0, and its gradient with them. The "limit"
  # family (scores near -1e4 and below, ties within O(1)) reaches it; nothing else does.
  def llmc_as_written(qkv, dout, heads):
    _, att = llmc_forward(qkv, heads, start=-10000.0)
    return llmc_backward(dout, qkv, att, heads)

  report = check_op("attention", llmc_as_written, dtype=dtype, examples=10)
  assert report.verdict == "fail", report.text()
  assert report.first_case["label"]["family"] == "limit"
  assert check_op("attention", llmc, dtype=dtype, examples=10).verdict == "pass"
