"""``assert_backprop_correct``: the oracle as one assertion for a user's own pytest suite."""

from __future__ import annotations


def assert_backprop_correct(candidate, **spec):
  """Assert that ``candidate`` computes bpref's gradients everywhere in the declared domain.

  Args:
    candidate: grads(weights, biases, activations, loss, x, t) -> (dW, db) [, loss_value)] on
      NumPy arrays (see ``bpref.oracle``).
    **spec: the domain and search options of ``bpref.oracle.check`` (activations, losses,
      output_activations, reduction, max_depth, max_width, max_batch, dtype, layout, bias,
      examples, seed, strict_kinks, timeout, isolate, workers).

  Returns:
    the passing ``bpref.oracle.Report`` (its notes name any kink convention met).

  Raises:
    AssertionError with the oracle's readable report (minimal failing network, errors per
    array, diagnosis) when the candidate is wrong somewhere in the domain, or when the oracle
    gives no verdict (fewer networks checked than asked for: the report counts them).

  >>> import numpy as np
  >>> from bpref.testing import assert_backprop_correct
  >>> def linear(weights, biases, activations, loss, x, t):
  ...   g = (x @ weights[0].T + biases[0][None, :] - t) / x.shape[0]
  ...   return [g.T @ x], [g.sum(axis=0)]
  >>> _ = assert_backprop_correct(linear, activations=("identity",), losses=("half_squared_error",),
  ...                             max_depth=1, examples=5)
  """
  from bpref import compilation, oracle

  compilation.use_cache(default=True)  # the persistent cache (bpref.compilation), as the CLI
  report = oracle.check(candidate, **spec)
  if not report.passed:
    head = "is wrong" if report.verdict == "fail" else "could not be judged (no verdict)"
    raise AssertionError(f"bpref oracle: the candidate's backprop {head}\n" + report.text()
                         + "\n\nreproducer:\n" + report.reproducer)
  return report
