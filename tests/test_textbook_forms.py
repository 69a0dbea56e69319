"""bpref.oracle.textbook_forms: other people's forms of f' and their errors, one table on the
oracle's side; the activation records keep bpref's own f, f' and f''."""

import jax.numpy as jnp
import numpy as np
import pytest

from bpref import activations as A
from bpref.oracle import textbook_forms as T

EXACT_FORMS = {"identity", "relu", "leaky_relu", "sin"}
"""Elementwise activations whose every common form of f' is exact to a relative u."""


def test_the_table_covers_every_activation_and_the_records_hold_none_of_it():
  assert set(T.TEXTBOOK) == set(A.ACTIVATIONS)
  elementwise = {name for name, act in A.ACTIVATIONS.items() if act.elementwise}
  assert {name for name, t in T.TEXTBOOK.items() if t.error is None} == EXACT_FORMS | {"softmax"}
  assert set(T.A_FORMS) <= elementwise - EXACT_FORMS
  assert dict(T.ERRORS) == {name: t.error for name, t in T.TEXTBOOK.items() if t.error}
  assert not {"df_forms", "a_form"} & set(A.Activation._fields)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_error_is_finite_nonnegative_and_stops_growing_once_the_form_saturates(dtype):
  # issue 31: an allowance growing with |z| let a float32 gelu_tanh' of 0 for every z > 50 pass
  z = jnp.asarray(np.concatenate([np.linspace(-50.0, 50.0, 2001), [-1e3, -200.0, 200.0, 1e3]]),
                  dtype)
  near = np.abs(np.asarray(z)) <= 50
  for name, error in T.ERRORS:
    phi = np.asarray(error(z, A.get(name).f(z)))
    assert phi.dtype == np.dtype(dtype) and np.all(np.isfinite(phi)) and np.all(phi >= 0), name
    assert np.max(phi[~near]) <= np.max(phi[near]), name


def test_an_a_form_is_nan_at_nan():
  a = np.array([np.nan, -np.nan])  # f(NaN) = NaN for every activation (tests/test_activations.py)
  for name, form in T.A_FORMS.items():
    assert np.all(np.isnan(form.df(a))), name
