"""bpref.error: the error measures, relative to the bound, to the largest entry, over trees."""

import numpy as np
import pytest

from bpref import error
from bpref.structures import Layer


def test_max_norm_error_is_relative_to_the_largest_entry():
  expected = np.array([1.0, 1e-6, -2.0])
  assert error.max_norm_error(expected, expected) == 0.0
  assert error.max_norm_error(expected + [0, 0, 2e-3], expected) == pytest.approx(1e-3)
  assert error.max_norm_error(np.array([1.0, np.nan, 0.0]), expected) == np.inf
  assert error.max_norm_error(np.ones(2), expected) == np.inf
  assert error.max_norm_error(np.array([1e-20]), np.zeros(1)) == 1e-20


def test_normwise_error_is_relative_to_its_bound_or_to_the_truth():
  expected = np.array([3.0, -4.0])
  assert error.normwise_error(expected + [0.0, 0.5], expected) == pytest.approx(0.1)
  assert error.normwise_error(expected + [0.0, 0.5], expected, np.array([0.0, 50.0])) == pytest.approx(0.01)
  assert error.normwise_error(np.array([1e-20, 0.0]), np.zeros(2)) == 1e-20  # absolute at 0


def test_worst_error_is_the_worst_array_of_two_trees_of_one_structure():
  exact = (Layer(np.ones((2, 2)), np.ones(2), "tanh"),)
  off = (Layer(np.ones((2, 2)), np.array([1.0, 1.5]), "tanh"),)
  assert error.worst_error(off, exact) == pytest.approx(0.5)
  assert error.worst_error((Layer(np.ones((2, 2)), None, "tanh"),), exact) == np.inf
