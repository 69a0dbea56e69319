"""The table of known wrong forms of f' that both diagnoses read (bpref.oracle.forms)."""

from __future__ import annotations

import numpy as np
import pytest

from bpref import activations
from bpref.oracle import forms, textbook_forms

ALL = [form for table in forms.FORMS.values() for form in table]


def test_every_form_is_named_once_for_an_elementwise_activation():
  for name, table in forms.FORMS.items():
    assert len({f.code for f in table}) == len(table), name
    assert all(f.activation == name for f in table), name
  for form in ALL:
    assert activations.get(form.activation).elementwise, form
    assert form.slip in forms.SLIPS and form.variable in ("z", "a"), form
    assert form.code.startswith(form.activation.split("_")[0]), form
  assert "softmax" not in forms.FORMS
  assert set(forms.A_FORMS) == set(textbook_forms.A_FORMS)


CLOSE = {"selu_constants_rounded": 1e-7}
"""Forms wrong by less than 1e-4 of f': selu's constants rounded to 5 and 6 digits move f' by
about 1e-6 of itself, which float64 tells apart (u = 1.1e-16) and float32 only near its
tolerance (the diagnosis's near-tolerance rule names it there)."""


@pytest.mark.parametrize("form", ALL, ids=[f"{f.activation}:{f.code}" for f in ALL])
def test_every_form_is_wrong_somewhere_on_ordinary_z(form):
  # a form equal to f' would be a model that can never be told from a correct candidate;
  # z = 0 is left out, where a kink convention alone could make the difference
  z = np.linspace(-3, 3, 61)
  z = z[z != 0]
  a = np.asarray(activations.get(form.activation).f(z))
  right = np.asarray(activations.get(form.activation).df(z))
  values = form.values(z, a)
  assert values.shape == z.shape
  assert np.max(np.abs(values - right)) > CLOSE.get(form.code, 1e-4), form.code


def test_a_form_fed_z_uses_z_where_a_belongs():
  z = np.array([0.5, 2.0])
  tanh = forms.WRONG_VARIABLE["tanh"]
  assert np.array_equal(tanh.values(z, np.tanh(z)), 1 - z * z)  # 1 - a^2 at a := z
  sigmoid = forms.WRONG_VARIABLE["sigmoid"]
  assert np.array_equal(sigmoid.values(z, np.zeros(2)), z * (1 - z))
