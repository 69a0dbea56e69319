"""Symbolic proofs of the backward steps of ``bpref.layers`` (proofs/layers.md), and a
counterexample to each classic mistake listed there.

Every input (x, w, b, W, the tables, eps) and the output cotangent g = dC/dout are
independent symbols; the loss enters only through g, since dC/dtheta = sum g (dout/dtheta)
for every C (proofs/test_symbolic.py). So proving that the handwritten formula equals sympy's
derivative of phi = sum(g * out) proves it for every loss, at these sizes:

* layernorm: one row of C = 3, and two rows of C = 2 (the sums over rows);
* embedding: V = 3, P = 3, B = 2, T = 2, a token repeated three times, a token never used
  and a position row beyond T;
* residual: two rows of C = 2 with an undefined activation f whose derivative is another
  undefined function f' (sympy applies the chain rule through ``fdiff``).

Layernorm's rstd = (var + eps)^(-1/2) is a power of a polynomial P; sympy's derivative holds
P^(-3/2), the handwritten formula rstd^3 = P^(-3/2) too. Writing every P^e as s^(-2e) for a
new symbol s leaves polynomials in 1/s and the inputs, and their difference expands to the zero
polynomial: the identity holds for every value of s, in particular for s = sqrt(var + eps) =
1 / rstd. (A power left unreplaced would stay an atom and fail the check, never pass it.) A mistake is
shown by an exact point where it differs: rational inputs, sqrt evaluated to 30 digits.
"""

import functools

import jax.numpy as jnp
import numpy as np
import sympy as sp
from sympy.core.function import AppliedUndef

from bpref.layers import embedding, layernorm, residual
from bpref.error import max_norm_error
from bpref.tolerance import gradient_tolerance


def is_zero(expr) -> bool:
  """Whether expr is the zero polynomial with every applied undefined function (f(.), f'(.))
  taken as an independent atom (sound: such a polynomial that is 0 is 0 for every f)."""
  atoms = {atom: sp.Dummy() for atom in expr.atoms(AppliedUndef)}
  return sp.expand(expr.xreplace(atoms)) == 0


def differs(a, b, at: dict) -> bool:
  """Whether a and b differ at the exact point ``at`` (evaluated to 30 digits)."""
  gap = sp.N((a - b).xreplace(at), 30)
  return abs(gap) > 1e-12


# ---------------------------------------------------------------- layernorm

def symbolic_layernorm(rows: int, C: int, divisor=None, eps_inside: bool = True):
  """Symbols x (rows, C), w, b, g (rows, C), eps, and the forward step (LN1)-(LN5), row by row.

  ``divisor`` replaces the variance's C (C - 1: the unbiased variance); ``eps_inside=False``
  puts eps outside the root, rstd = 1 / (sqrt(var) + eps). Both are mistakes."""
  x = sp.Matrix(rows, C, lambda n, i: sp.Symbol(f"x{n}_{i}", real=True))
  g = sp.Matrix(rows, C, lambda n, i: sp.Symbol(f"g{n}_{i}", real=True))
  w = sp.symbols(f"w0:{C}", real=True)
  b = sp.symbols(f"b0:{C}", real=True)
  eps = sp.Symbol("eps", positive=True)
  mu, var, rstd, xhat, out = [], [], [], [], sp.zeros(rows, C)
  for n in range(rows):
    m = sum(x[n, i] for i in range(C)) / C  # (LN1)
    v = sum((x[n, i] - m) ** 2 for i in range(C)) / (divisor or C)  # (LN2)
    r = 1 / sp.sqrt(v + eps) if eps_inside else 1 / (sp.sqrt(v) + eps)  # (LN3)
    xh = [(x[n, i] - m) * r for i in range(C)]  # (LN4)
    for i in range(C):
      out[n, i] = xh[i] * w[i] + b[i]  # (LN5)
    mu.append(m), var.append(v), rstd.append(r), xhat.append(xh)
  phi = sum(g[n, i] * out[n, i] for n in range(rows) for i in range(C))
  return dict(x=x, g=g, w=w, b=b, eps=eps, mu=mu, var=var, rstd=rstd, xhat=xhat, out=out, phi=phi,
              rows=rows, C=C)


def layernorm_hand(ln, mean_xhat_term: bool = True, mean_dxhat_term: bool = True, divisor=None):
  """(dx, dw, db) by (LN8)-(LN11) on the symbolic layer; the flags drop a term (mistakes).
  ``divisor`` is what mean_C(dxhat xhat) divides by (C; C - 1 is the unbiased layer's)."""
  rows, C, g, w = ln["rows"], ln["C"], ln["g"], ln["w"]
  dx = sp.zeros(rows, C)
  for n in range(rows):
    r, xh = ln["rstd"][n], ln["xhat"][n]
    dxh = [g[n, i] * w[i] for i in range(C)]  # (LN8)
    m1 = sum(dxh) / C if mean_dxhat_term else 0
    m2 = sum(d * h for d, h in zip(dxh, xh)) / (divisor or C) if mean_xhat_term else 0
    for i in range(C):
      dx[n, i] = r * (dxh[i] - m1 - xh[i] * m2)  # (LN9)
  dw = [sum(g[n, i] * ln["xhat"][n][i] for n in range(rows)) for i in range(C)]  # (LN10)
  db = [sum(g[n, i] for n in range(rows)) for i in range(C)]  # (LN11)
  return dict(dx=dx, dw=dw, db=db)


def _without_roots(expr, ln):
  """expr with each row's (var + eps)^e written s_n^(-2e): a polynomial in s_n and the inputs."""
  for n, r in enumerate(ln["rstd"]):
    base, s = r.base, sp.Symbol(f"s{n}", positive=True)  # r = base^(-1/2)
    expr = expr.replace(lambda e, base=base: e.is_Pow and e.base == base,
                        lambda e, s=s: s ** (-2 * e.exp))
  return expr


def _layernorm_proof(rows, C):
  ln = symbolic_layernorm(rows, C)
  hand = layernorm_hand(ln)
  phi = ln["phi"]
  for n in range(rows):
    for i in range(C):
      assert is_zero(_without_roots(sp.diff(phi, ln["x"][n, i]) - hand["dx"][n, i], ln)), ("dx", n, i)
  for i in range(C):
    assert is_zero(_without_roots(sp.diff(phi, ln["w"][i]) - hand["dw"][i], ln)), ("dw", i)
    assert is_zero(sp.diff(phi, ln["b"][i]) - hand["db"][i]), ("db", i)
  return ln, hand


def test_layernorm_backward_equals_sympy_derivative():
  """(LN8)-(LN11) are the derivative of sum(g * out), one row of C = 3 and two rows of C = 2."""
  _layernorm_proof(1, 3)
  _layernorm_proof(2, 2)


def test_layernorm_one_feature_has_zero_input_gradient():
  """C = 1: x - mu = 0, so xhat = 0, out = b and dx = 0 whatever eps (LN9 gives r (g w - g w))."""
  ln = symbolic_layernorm(1, 1)
  assert sp.simplify(ln["out"][0, 0] - ln["b"][0]) == 0
  assert sp.diff(ln["phi"], ln["x"][0, 0]) == 0
  assert sp.expand(layernorm_hand(ln)["dx"][0, 0]) == 0


@functools.cache
def _layernorm_case(rows=2, C=3, divisor=None, eps_inside=True):
  ln = symbolic_layernorm(rows, C, divisor, eps_inside)
  rng = np.random.default_rng(5)
  at = {s: sp.Rational(int(v), 8) for s, v in zip(
      list(ln["x"]) + list(ln["g"]) + list(ln["w"]) + list(ln["b"]),
      rng.integers(-16, 17, size=2 * rows * C + 2 * C))}
  at[ln["eps"]] = sp.Rational(1, 100)
  return ln, at


def _true_dx(ln):
  return sp.Matrix(ln["rows"], ln["C"], lambda n, i: sp.diff(ln["phi"], ln["x"][n, i]))


def test_layernorm_mistake_mean_of_dxhat_missing():
  """dx = rstd (dxhat - xhat mean(dxhat xhat)) misses the path through mu: off by rstd mean(dxhat)."""
  ln, at = _layernorm_case()
  wrong = layernorm_hand(ln, mean_dxhat_term=False)["dx"]
  assert any(differs(_true_dx(ln)[n, i], wrong[n, i], at) for n in range(2) for i in range(3))
  # and the proof's checker rejects it (it is not vacuous)
  assert not is_zero(_without_roots(_true_dx(ln)[0, 0] - wrong[0, 0], ln))


def test_layernorm_mistake_xhat_term_missing():
  """dx = rstd (dxhat - mean(dxhat)) misses the path through var: off by rstd xhat mean(dxhat xhat)."""
  ln, at = _layernorm_case()
  wrong = layernorm_hand(ln, mean_xhat_term=False)["dx"]
  assert any(differs(_true_dx(ln)[n, i], wrong[n, i], at) for n in range(2) for i in range(3))


def test_layernorm_mistake_unbiased_variance():
  """The variance over C - 1 changes the layer: its output differs; the biased backward formula
  on its rstd and xhat is the gradient of neither layer; the unbiased layer's own gradient has
  C - 1 in place of C in the xhat term."""
  ln, at = _layernorm_case()
  unbiased, _ = _layernorm_case(divisor=2)
  assert differs(ln["out"][0, 0], unbiased["out"][0, 0], at)
  mixed = layernorm_hand(unbiased)["dx"]  # torch.var's default in the forward, (LN9) in the backward
  true, true_unbiased = _true_dx(ln), _true_dx(unbiased)
  assert any(differs(true[n, i], mixed[n, i], at) for n in range(2) for i in range(3))
  assert any(differs(true_unbiased[n, i], mixed[n, i], at) for n in range(2) for i in range(3))
  own = layernorm_hand(unbiased, divisor=2)["dx"]
  assert all(not differs(true_unbiased[n, i], own[n, i], at) for n in range(2) for i in range(3))


def test_layernorm_mistake_eps_outside_the_root():
  """rstd = 1 / (sqrt(var) + eps) is another layer: its output and gradient differ, and its
  derivative through sqrt(var) is infinite at var = 0 (a constant row)."""
  ln, at = _layernorm_case()
  outside, _ = _layernorm_case(eps_inside=False)
  assert differs(ln["out"][0, 0], outside["out"][0, 0], at)
  true, other = _true_dx(ln), _true_dx(outside)
  assert any(differs(true[n, i], other[n, i], at) for n in range(2) for i in range(3))
  v = sp.Symbol("v", positive=True)
  assert sp.limit(sp.diff(1 / (sp.sqrt(v) + outside["eps"]), v), v, 0, "+") == -sp.oo
  assert sp.limit(sp.diff(1 / sp.sqrt(v + ln["eps"]), v), v, 0, "+").is_finite


def test_layernorm_mistake_dw_db_not_summed_over_rows():
  """dw and db sum over every row that shares w and b: one row's share (or the last row's, as a
  loop that assigns instead of adding leaves) is not the gradient, nor is the mean over rows."""
  ln, at = _layernorm_case()
  g, xhat = ln["g"], ln["xhat"]
  true_dw = [sp.diff(ln["phi"], ln["w"][i]) for i in range(3)]
  true_db = [sp.diff(ln["phi"], ln["b"][i]) for i in range(3)]
  assert any(differs(true_dw[i], g[1, i] * xhat[1][i], at) for i in range(3))  # the last row's
  assert any(differs(true_dw[i], (g[0, i] * xhat[0][i] + g[1, i] * xhat[1][i]) / 2, at) for i in range(3))
  assert any(differs(true_db[i], g[1, i], at) for i in range(3))
  assert any(differs(true_db[i], (g[0, i] + g[1, i]) / 2, at) for i in range(3))


def test_layernorm_proof_evaluates_to_bpref():
  """The proven formulas, evaluated at random float64 values, are what bpref.layers computes."""
  ln = symbolic_layernorm(2, 3)
  hand = layernorm_hand(ln)
  symbols = list(ln["x"]) + list(ln["g"]) + list(ln["w"]) + list(ln["b"]) + [ln["eps"]]
  fn = sp.lambdify(symbols, [hand["dx"], hand["dw"], hand["db"]], modules="numpy")
  rng = np.random.default_rng(11)
  x, g, w, b = rng.normal(size=(2, 3)), rng.normal(size=(2, 3)), rng.normal(size=3), rng.normal(size=3)
  exact = fn(*x.ravel(), *g.ravel(), *w, *b, 1e-5)
  ours = layernorm.grads(jnp.asarray(x), jnp.asarray(w), jnp.asarray(b), jnp.asarray(g))
  for mine, proven in zip(ours, exact):
    proven = np.asarray(proven, float).reshape(np.shape(mine))
    assert max_norm_error(mine, proven) <= gradient_tolerance(np.float64)


# ---------------------------------------------------------------- embedding

IDS = ((0, 2), (2, 2))  # token 2 three times, token 1 never; B = 2, T = 2
VOCAB, POSITIONS, FEATURES = 3, 3, 2  # P = 3 > T: the row t = 2 of wpe is never used


def symbolic_embedding():
  wte = sp.Matrix(VOCAB, FEATURES, lambda v, c: sp.Symbol(f"e{v}_{c}"))
  wpe = sp.Matrix(POSITIONS, FEATURES, lambda t, c: sp.Symbol(f"p{t}_{c}"))
  B, T = len(IDS), len(IDS[0])
  g = [[[sp.Symbol(f"g{b}_{t}_{c}") for c in range(FEATURES)] for t in range(T)] for b in range(B)]
  out = [[[wte[IDS[b][t], c] + wpe[t, c] for c in range(FEATURES)] for t in range(T)]
         for b in range(B)]  # (EMB1)
  phi = sum(g[b][t][c] * out[b][t][c] for b in range(B) for t in range(T) for c in range(FEATURES))
  return dict(wte=wte, wpe=wpe, g=g, phi=phi, B=B, T=T)


def embedding_hand(emb):
  """(dwte, dwpe) by (EMB2), (EMB3), as nested lists (V, C) and (P, C)."""
  g, B, T = emb["g"], emb["B"], emb["T"]
  dwte = [[0] * FEATURES for _ in range(VOCAB)]
  for b in range(B):
    for t in range(T):
      for c in range(FEATURES):
        dwte[IDS[b][t]][c] += g[b][t][c]  # (EMB2): accumulate
  dwpe = [[sum(g[b][t][c] for b in range(B)) if t < T else 0 for c in range(FEATURES)]
          for t in range(POSITIONS)]  # (EMB3)
  return dwte, dwpe


def test_embedding_backward_equals_sympy_derivative():
  """(EMB2), (EMB3): a token repeated three times gets the sum of its three rows of g, an unused
  token and an unused position get 0."""
  emb = symbolic_embedding()
  dwte, dwpe = embedding_hand(emb)
  for v in range(VOCAB):
    for c in range(FEATURES):
      assert sp.expand(sp.diff(emb["phi"], emb["wte"][v, c]) - dwte[v][c]) == 0, (v, c)
  for t in range(POSITIONS):
    for c in range(FEATURES):
      assert sp.expand(sp.diff(emb["phi"], emb["wpe"][t, c]) - dwpe[t][c]) == 0, (t, c)
  assert dwte[1] == [0, 0] and dwpe[2] == [0, 0]


def test_embedding_mistake_repeated_token_overwritten():
  """dwte[ids] = dout (NumPy's fancy assignment) keeps one row per repeated token, not the sum."""
  emb = symbolic_embedding()
  g = emb["g"]
  wrong = np.zeros((VOCAB, FEATURES), dtype=object)
  wrong[np.asarray(IDS)] = np.asarray(g, dtype=object)  # the last write wins
  true = sp.diff(emb["phi"], emb["wte"][2, 0])
  assert sp.expand(true - wrong[2, 0]) != 0
  assert sp.expand(true - (g[0][1][0] + g[1][0][0] + g[1][1][0])) == 0
  # np.add.at is the unbuffered NumPy form that accumulates, as jnp's .at[].add does
  right = np.zeros((VOCAB, FEATURES), dtype=object)
  np.add.at(right, np.asarray(IDS), np.asarray(g, dtype=object))
  assert sp.expand(true - right[2, 0]) == 0


def test_embedding_mistake_position_gradient_not_summed_over_batch():
  """dwpe[t] = dout[b, t] of one example (or the batch mean) is not the sum over the batch."""
  emb = symbolic_embedding()
  g = emb["g"]
  true = sp.diff(emb["phi"], emb["wpe"][0, 0])
  assert sp.expand(true - g[-1][0][0]) != 0
  assert sp.expand(true - (g[0][0][0] + g[1][0][0]) / 2) != 0
  assert sp.expand(true - (g[0][0][0] + g[1][0][0])) == 0


# ---------------------------------------------------------------- residual

@functools.cache
def generic_activation():
  """f: an undefined function whose derivative is the undefined function df."""
  df = sp.Function("df")

  def fdiff(self, argindex=1):
    return df(self.args[0])

  return type("f", (sp.Function,), {"fdiff": fdiff, "nargs": 1}), df


def symbolic_residual(rows=2, C=2):
  f, df = generic_activation()
  x = sp.Matrix(rows, C, lambda n, i: sp.Symbol(f"x{n}_{i}"))
  g = sp.Matrix(rows, C, lambda n, i: sp.Symbol(f"g{n}_{i}"))
  W = sp.Matrix(C, C, lambda i, j: sp.Symbol(f"W{i}{j}"))
  b = sp.Matrix(1, C, lambda _, i: sp.Symbol(f"b{i}"))
  z = x * W.T + sp.ones(rows, 1) * b  # (RES1)
  y = x + z.applyfunc(f)  # (RES2), (RES3)
  phi = sum(g[n, i] * y[n, i] for n in range(rows) for i in range(C))
  return dict(x=x, g=g, W=W, b=b, z=z, y=y, phi=phi, df=df, rows=rows, C=C)


def residual_hand(res, skip: int = 1, transpose_W: bool = False):
  """(dx, dW, db) by (RES4)-(RES7); ``skip`` counts the skip path (1 is right), ``transpose_W``
  pulls back with W^T (a mistake a square W does not catch)."""
  g, W, z = res["g"], res["W"], res["z"]
  delta = sp.Matrix(res["rows"], res["C"], lambda n, i: g[n, i] * res["df"](z[n, i]))  # (RES4)
  dx = skip * g + delta * (W.T if transpose_W else W)  # (RES5)
  dW = delta.T * res["x"]  # (RES6)
  db = sp.ones(1, res["rows"]) * delta  # (RES7)
  return dict(dx=dx, dW=dW, db=db)


def _true_residual(res):
  rows, C = res["rows"], res["C"]
  return dict(dx=sp.Matrix(rows, C, lambda n, i: sp.diff(res["phi"], res["x"][n, i])),
              dW=sp.Matrix(C, C, lambda i, j: sp.diff(res["phi"], res["W"][i, j])),
              db=sp.Matrix(1, C, lambda _, i: sp.diff(res["phi"], res["b"][i])))


def test_residual_backward_equals_sympy_derivative():
  """(RES4)-(RES7) for any differentiable f, two rows of C = 2: dx = dy + delta W."""
  res = symbolic_residual()
  hand, true = residual_hand(res), _true_residual(res)
  for key in ("dx", "dW", "db"):
    assert all(is_zero(e) for e in true[key] - hand[key]), key


def test_residual_mistake_skip_gradient_dropped():
  """dx = delta W forgets that x also reaches y directly: off by dy."""
  res = symbolic_residual()
  assert not all(is_zero(e) for e in _true_residual(res)["dx"] - residual_hand(res, skip=0)["dx"])


def test_residual_mistake_skip_gradient_counted_twice():
  """dx = 2 dy + delta W (the skip added in the sum and again at the fan-out): off by dy."""
  res = symbolic_residual()
  assert not all(is_zero(e) for e in _true_residual(res)["dx"] - residual_hand(res, skip=2)["dx"])


def test_residual_mistake_W_transposed():
  """dx = dy + delta W^T has the right shape for a square W, and the wrong value."""
  res = symbolic_residual()
  assert not all(is_zero(e) for e in _true_residual(res)["dx"] - residual_hand(res, transpose_W=True)["dx"])


def test_residual_proof_evaluates_to_bpref():
  """The proven formulas with f = tanh, f' = sech^2 evaluate to bpref.layers.residual's."""
  res = symbolic_residual()
  hand = residual_hand(res)
  symbols = list(res["x"]) + list(res["g"]) + list(res["W"]) + list(res["b"])
  modules = [{"f": np.tanh, "df": lambda s: 1 / np.cosh(s) ** 2}, "numpy"]
  fn = sp.lambdify(symbols, [hand["dx"], hand["dW"], hand["db"]], modules=modules)
  rng = np.random.default_rng(13)
  x, g, W, b = rng.normal(size=(2, 2)), rng.normal(size=(2, 2)), rng.normal(size=(2, 2)), rng.normal(size=2)
  exact = fn(*x.ravel(), *g.ravel(), *W.ravel(), *b)
  _, cache = residual.forward(jnp.asarray(x), jnp.asarray(W), jnp.asarray(b), "tanh")
  ours = residual.backward(cache, jnp.asarray(W), "tanh", jnp.asarray(g))
  for mine, proven in zip(ours, exact):
    proven = np.asarray(proven, float).reshape(np.shape(mine))
    assert max_norm_error(mine, proven) <= gradient_tolerance(np.float64)


def test_embedding_proof_evaluates_to_bpref():
  """(EMB2), (EMB3) evaluated at random values are bpref.layers.embedding's backward, exactly."""
  emb = symbolic_embedding()
  dwte, dwpe = embedding_hand(emb)
  g = np.random.default_rng(17).normal(size=(2, 2, FEATURES))
  at = {emb["g"][b][t][c]: g[b, t, c] for b, t, c in np.ndindex(g.shape)}
  ours = embedding.backward(jnp.asarray(IDS), jnp.asarray(g), VOCAB, POSITIONS)
  for mine, proven in zip(ours, (dwte, dwpe)):
    proven = np.array([[float(sp.sympify(e).xreplace(at)) for e in row] for row in proven])
    assert max_norm_error(mine, proven) <= gradient_tolerance(np.float64)

