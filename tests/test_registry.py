"""Every registered activation is known everywhere a name must be known outside its record.

An activation's own facts (f, f', the kink, the textbook form of f' from a, the rounding
allowance rho_f) live on its ``bpref.activations.Activation`` record. A few places keep
their own form of f on purpose, for independence (the mpmath referee, the complex step,
the tests' textbook code), and the bridges map it to a framework's function. This test
lists everything a newly registered name still lacks, all at once. The tables are read
from the source, so that the check needs none of the frameworks installed.
"""

import ast
import pathlib

import jax.numpy as jnp

import bpref
from bpref import activations as A
from bpref import losses as L
from bpref.oracle.judge import KINK_CONVENTIONS

ROOT = pathlib.Path(bpref.__file__).parent.parent


def _dict_keys(path: str, name: str) -> set:
  """The string keys of the dict literal assigned to ``name`` at the top of ``path``."""
  tree = ast.parse((ROOT / path).read_text())
  for node in tree.body:
    target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
    if isinstance(target, ast.Name) and target.id == name and isinstance(node.value, ast.Dict):
      return {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
  raise AssertionError(f"{path} has no dict literal {name}")


def _compared_names(path: str, function: str, variable: str = "name") -> set:
  """The names ``function`` in ``path`` tests for with ``variable == "..."``."""
  tree = ast.parse((ROOT / path).read_text())
  fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
  return {c.comparators[0].value for c in ast.walk(fn)
          if isinstance(c, ast.Compare) and isinstance(c.left, ast.Name) and c.left.id == variable
          and isinstance(c.comparators[0], ast.Constant)}


def _places() -> dict:
  """Where each name must be known: place -> (names that need it, names it knows)."""
  every = set(A.ACTIVATIONS)
  elementwise = {n for n, a in A.ACTIVATIONS.items() if a.elementwise}
  torch_known = _dict_keys("bpref/bridges/torch.py", "MODULES") | _dict_keys(
      "bpref/bridges/torch.py", "NO_MODULE")
  complex_known = _dict_keys("bpref/witnesses/finite_diff.py", "COMPLEX_ACTIVATIONS") | _dict_keys(
      "bpref/witnesses/finite_diff.py", "NO_COMPLEX_FORM")
  return {
      "the mpmath referee (bpref/witnesses/referee.py _SCALAR)":
          (elementwise, _dict_keys("bpref/witnesses/referee.py", "_SCALAR")),
      "a complex form or an exclusion (bpref/witnesses/finite_diff.py COMPLEX_ACTIVATIONS, NO_COMPLEX_FORM)":
          (every, complex_known),
      "the JAX function (bpref/bridges/_jax_autodiff.py FUNCTIONS)":
          (every, _dict_keys("bpref/bridges/_jax_autodiff.py", "FUNCTIONS")),
      "a torch module or an exclusion (bpref/bridges/torch.py MODULES, NO_MODULE)":
          (every, torch_known),
      "the symbolic proofs' exact form (proofs/test_symbolic.py MP_ACTIVATIONS)":
          (elementwise, _dict_keys("proofs/test_symbolic.py", "MP_ACTIVATIONS")),
      "jax.nn's f (tests/test_activations.py JAX_NN)":
          (elementwise, _dict_keys("tests/test_activations.py", "JAX_NN")),
      "the exact f' as terms (tests/test_activations.py EXACT_PRIME_TERMS)":
          (elementwise, _dict_keys("tests/test_activations.py", "EXACT_PRIME_TERMS")),
      "the textbook forward (tests/textbook.py forward_f)":
          (every, _compared_names("tests/textbook.py", "forward_f")),
      "the textbook f' (tests/textbook.py derivative)":
          (elementwise, _compared_names("tests/textbook.py", "derivative")),
      "the kink's f'(0) in the proofs (proofs/test_symbolic.py KINK_CONVENTION)":
          (set(A.KINKED), _dict_keys("proofs/test_symbolic.py", "KINK_CONVENTION")),
  }


def _loss_places() -> dict:
  """Where each loss name must be known: place -> the names it knows."""
  return {
      "the complex step's form (bpref/witnesses/finite_diff.py COMPLEX_LOSSES)":
          _dict_keys("bpref/witnesses/finite_diff.py", "COMPLEX_LOSSES"),
      "the mpmath referee (bpref/witnesses/referee.py _loss_rows)":
          _compared_names("bpref/witnesses/referee.py", "_loss_rows", "loss"),
      "torch's loss function (bpref/bridges/torch.py loss_per_example)":
          _compared_names("bpref/bridges/torch.py", "loss_per_example", "loss"),
      "the textbook loss (tests/textbook.py loss_and_dy)":
          _compared_names("tests/textbook.py", "loss_and_dy", "loss"),
  }


def test_every_activation_is_known_wherever_names_are_mapped():
  missing = [f"{name}: {place}" for place, (needed, known) in _places().items()
             for name in sorted(needed - known)]
  assert not missing, "registered activations missing elsewhere:\n  " + "\n  ".join(missing)


def test_every_loss_is_known_wherever_names_are_mapped():
  missing = [f"{name}: {place}" for place, known in _loss_places().items()
             for name in sorted(set(L.LOSSES) - known)]
  assert not missing, "registered losses missing elsewhere:\n  " + "\n  ".join(missing)


def test_no_place_knows_a_name_that_is_not_registered():
  stray = [f"{name}: {place}" for place, (_, known) in _places().items()
           for name in sorted(known - set(A.ACTIVATIONS))]
  stray += [f"{name}: {place}" for place, known in _loss_places().items()
            for name in sorted(known - set(L.LOSSES))]
  assert not stray, "names that are not registered:\n  " + "\n  ".join(stray)


def test_every_loss_record_is_complete():
  for name, loss in L.LOSSES.items():
    assert loss.targets in ("real", "distribution", "probabilities"), name
    assert loss.min_outputs >= 1, name
    if loss.output is not None:  # a loss on probabilities names its twin on logits
      twin = L.get(loss.logits)
      assert twin.on_logits and twin.targets == loss.targets, name
    if loss.on_logits:
      assert loss.output is None and loss.targets != "real", name


def test_every_record_is_complete():
  for name, act in A.ACTIVATIONS.items():
    if not act.elementwise:
      assert act.df is None and not act.kink, name
      continue
    # rho_f: exact f' (piecewise-linear) or an allowance for the forms in use
    assert act.piecewise_linear == (act.d2f is None), name
    assert (act.kink == "f'") == (name in KINK_CONVENTIONS), name  # the values in use at the jump
    if act.kink == "f'":  # the first is bpref's own f'(0)
      assert float(act.df(jnp.zeros(1))[0]) == KINK_CONVENTIONS[name][0][0], name
    assert act.kink in (None, "f'", "f''"), name
    documented = (ROOT / "proofs/tolerance.md").read_text()
    assert act.piecewise_linear or f"**{name}.**" in documented or f"\n{name}:" in documented \
        or f"ρ_{name}" in documented, f"{name}: no derivation of rho_f in proofs/tolerance.md"
