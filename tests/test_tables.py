"""bpref.tables: float64 evaluation of the activations through switch tables chosen by argument.

A caller that names its activations (a search's declared domain, verify's every name) gets
one compiled table per role over those names alone; the values are those of the full tables
and of each function compiled alone; a function outside the named ones still works.
"""

import numpy as np

from bpref import activations, tables
from bpref.oracle import spec as _spec
from bpref.oracle import truth
from bpref.oracle.textbook_forms import ERRORS
from bpref.scale import fast


def _spy(monkeypatch) -> list:
  asked = []
  found = tables._tables
  monkeypatch.setattr(tables, "_tables",
                      lambda names=None, forms=(): asked.append(names) or found(names, forms))
  return asked


def test_a_table_holds_the_named_activations_alone_and_gives_the_same_values(monkeypatch):
  z = np.linspace(-30.0, 30.0, 301)
  a = np.tanh(z)
  full = {name: (tables.pointwise(activations.get(name).df, z, table=tables.ACTIVATIONS),
                 tables.pointwise(tables.rho_function(name, ERRORS), z, a, table=tables.ACTIVATIONS,
                                  forms=ERRORS))
          for name in ("tanh", "sigmoid", "elu")}
  few = ("tanh", "relu", "elu")
  asked = _spy(monkeypatch)
  tables.pointwise(activations.get("tanh").df, z, table=few)
  assert asked == [("elu", "relu", "tanh")]
  assert set(tables._tables(("elu", "relu", "tanh"), ERRORS)) == {
      fn for name in few for fn in
      (activations.get(name).f, activations.get(name).df, tables.rho_function(name),
       tables.rho_function(name, ERRORS)) if fn is not None}
  for name, (df, rho) in full.items():  # sigmoid is not named: the full table answers
    np.testing.assert_array_max_ulp(tables.pointwise(activations.get(name).df, z, table=few), df, maxulp=2)
    np.testing.assert_array_max_ulp(tables.pointwise(tables.rho_function(name, ERRORS), z, a, table=few,
                                                     forms=ERRORS), rho, maxulp=2)


def test_without_a_table_each_function_compiles_alone(monkeypatch):
  """One network's tolerance compiles its own few f's, not a table of every activation."""
  asked = _spy(monkeypatch)
  z = np.linspace(-3.0, 3.0, 7)
  alone = tables.pointwise(activations.get("tanh").f, z)
  assert asked == []
  every = tables.pointwise(activations.get("tanh").f, z, table=tables.ACTIVATIONS)
  assert asked == [None]  # every name: the one table of them all
  np.testing.assert_array_max_ulp(alone, every, maxulp=2)


def test_the_truth_uses_the_declared_names_and_gives_the_same_values(monkeypatch):
  y, t = np.random.default_rng(0).normal(size=(2, 5, 3))
  every = truth.loss_terms("huber", y, t)
  z = np.linspace(-5.0, 5.0, 11)
  asked = _spy(monkeypatch)
  declared = (("elu", "tanh"), ("huber",))
  np.testing.assert_array_max_ulp(truth.df("tanh", z, declared=declared),
                                  truth.df("tanh", z), maxulp=2)
  assert asked == [("elu", "tanh")]
  for mine, theirs in zip(truth.loss_terms("huber", y, t, declared=declared), every):
    np.testing.assert_array_max_ulp(mine, theirs, maxulp=2)
  assert truth._branches(None) == truth._branches(fast.EVERY) == fast.EVERY
  assert truth._branches(_spec.make_spec().names()) == truth.COMMON


def test_a_search_declares_its_spec_with_the_output_activations_and_fused_losses():
  from bpref.oracle import search

  spec = _spec.make_spec(activations=("tanh", "relu"), losses=("cross_entropy", "squared_error"))
  names, losses = search.Evaluator(None, spec).declared
  assert set(names) >= {"tanh", "relu", "softmax"}
  assert set(losses) == {"cross_entropy", "softmax_cross_entropy", "squared_error"}
