"""``assert_op_correct``: the op oracle as one assertion for a user's own pytest suite."""

from __future__ import annotations

from bpref.testing._assert import TALLY, failure, write_reproducer


def assert_op_correct(kind, candidate, name=None, *, reproducer=None, **options):
  """Assert that one operation's backward function matches bpref's on every case searched.

  Args:
    kind: "dense", "activation", "softmax", "loss" or "layer".
    candidate: the backward function (``bpref.oracle.ops`` gives each kind's arguments), an
      ``OpCandidate``, a ``torch.autograd.Function`` subclass or a ``jax.custom_vjp`` function.
    name: the activation (activation, layer) or loss (loss).
    reproducer: the file a failure writes its reproducer script to (as in
      ``assert_backprop_correct``); False writes none.
    **options: ``check_op``'s options (takes, layout, bias, reduction, targets, dtype, examples,
      seed, max_batch, max_width, strict_conventions, timeout).

  Returns:
    the passing ``OpReport`` (its notes name any convention met).

  Raises:
    AssertionError with the report (minimal failing case, errors, diagnosis) and the
    reproducer's path when the candidate is wrong somewhere, or when the oracle gives no
    verdict (fewer cases checked than asked for). Its first line names the diagnosis.

  >>> import numpy as np
  >>> from bpref.testing import assert_op_correct
  >>> _ = assert_op_correct("activation", lambda z, dout: dout * (z > 0), name="relu", examples=5)
  """
  __tracebackhide__ = True  # pytest shows the caller's line, not this function
  from bpref import compilation
  from bpref.oracle.ops import check_op

  compilation.use_cache(default=True)  # once per process: later calls find it on
  report = check_op(kind, candidate, name=name, **options)
  TALLY["checks"] += 1
  if report.passed:
    return report
  TALLY["failed"] += 1
  path = write_reproducer(report.reproducer, reproducer, f"{kind}_{name or ''}")
  raise failure("bpref op oracle", "the candidate's backward", report, path, report.text())
