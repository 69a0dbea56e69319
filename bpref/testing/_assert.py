"""``assert_backprop_correct``: the oracle as one assertion for a user's own pytest suite."""

from __future__ import annotations

import collections
import hashlib
import os
import re
import sys
import tempfile

ENV_REPRODUCER_DIR = "BPREF_REPRODUCER_DIR"
"""Where a failed assertion writes its reproducer script when not told a file; the pytest
plugin (``bpref.testing.plugin``) sets it to a folder of pytest's cache directory."""

TALLY = collections.Counter()
"""What this process's assertions and ``reference_grads`` did: "checks", "failed",
"references"; the pytest plugin's summary line reads it."""


def assert_backprop_correct(candidate, *, reproducer=None, **spec):
  """Assert that ``candidate`` computes bpref's gradients everywhere in the declared domain.

  Args:
    candidate: grads(weights, biases, activations, loss, x, t) -> (dW, db) [, loss_value)] on
      NumPy arrays (see ``bpref.oracle``).
    reproducer: the file a failure writes its reproducer script to; by default a file named
      after the test in $BPREF_REPRODUCER_DIR (the pytest plugin: .pytest_cache/d/bpref-
      reproducers), else in the temporary directory; False writes none.
    **spec: the domain and search options of ``bpref.oracle.check`` (activations, losses,
      output_activations, reduction, max_depth, max_width, max_batch, dtype, layout, bias,
      examples, seed, strict_kinks, timeout, isolate, workers). The candidate runs isolated
      by default: a picklable one (a module-level function) in the test session's one
      subprocess (``session_pool``), started at the first check and kept, so that a crash,
      an exit or a hang fails this test and the run goes on; ``isolate=False`` runs it in
      the test's process, as happens to a candidate that cannot be pickled (a lambda, a
      closure; ``os._exit`` still fails the check there, a crash in native code does not).

  Returns:
    the passing ``bpref.oracle.Report`` (its notes name any kink convention met).

  Raises:
    AssertionError with the oracle's readable report (minimal failing network, errors per
    array, diagnosis) and the reproducer's path when the candidate is wrong somewhere in the
    domain, or when the oracle gives no verdict (fewer networks checked than asked for: the
    report counts them). Its first line names the diagnosis; ``err.bpref_report`` is the report.

  >>> import numpy as np
  >>> from bpref.testing import assert_backprop_correct
  >>> def linear(weights, biases, activations, loss, x, t):
  ...   g = (x @ weights[0].T + biases[0][None, :] - t) / x.shape[0]
  ...   return [g.T @ x], [g.sum(axis=0)]
  >>> _ = assert_backprop_correct(linear, activations=("identity",), losses=("half_squared_error",),
  ...                             max_depth=1, examples=5)
  """
  __tracebackhide__ = True  # pytest shows the caller's line, not this function
  from bpref import compilation, oracle

  compilation.use_cache(default=True)  # the persistent cache (bpref.compilation), as the CLI
  where = _where(candidate, spec)
  report = oracle.check(candidate, **spec, **where)
  TALLY["checks"] += 1
  if report.passed:
    return report
  TALLY["failed"] += 1
  script = _runnable(report.reproducer, candidate) if report.reproducer else ""
  path = write_reproducer(script, reproducer, _name(candidate))
  raise failure("bpref oracle", "the candidate's backprop", report, path,
                report.text(rerun="the reproducer below" if path else None))


_SESSION: list = []
"""The test session's one isolated worker (an ``isolation.Isolated``), once a check started it."""


def session_pool(target, timeout: float):
  """The session's isolated worker, loaded with ``target`` (started at the first call)."""
  from bpref.oracle import isolation

  if not _SESSION:
    _SESSION.append(isolation.Isolated(target, workers=1, timeout=timeout))
  return _SESSION[0]


def prestart(modules) -> None:
  """Start the session's worker ahead of its first check, importing ``modules`` (installed
  packages) while the run loads its conftests and collects; the first check loads its
  candidate there."""
  from bpref.oracle import isolation

  if not _SESSION:
    _SESSION.append(isolation.Isolated(("preload", tuple(modules)), workers=1))


def session_imports() -> list:
  """The installed packages the session's worker had imported once it loaded a candidate;
  [] when no check ran there."""
  return list(_SESSION[0].installed) if _SESSION else []


def close_session() -> None:
  """End the session's worker (the pytest plugin calls it when the session finishes)."""
  while _SESSION:
    _SESSION.pop().close()


def _where(candidate, spec) -> dict:
  """Where a helper's check runs: {"pool": the session's worker} by default for a picklable
  candidate of one worker; {} (``spec`` says: in process, or its own subprocesses) otherwise.
  ``spec`` loses its "isolate" when the session's worker takes the check."""
  import pickle

  isolate = spec.get("isolate")
  if isolate is False or spec.get("workers", 1) > 1:
    return {}
  try:
    target = pickle.dumps(candidate)
  except Exception:  # in process; with isolate=True, the check's TypeError says what to change
    return {}
  spec.pop("isolate", None)
  return {"pool": session_pool(target, spec.get("timeout", 60.0))}


def failure(what: str, whose: str, report, path: str | None, text: str) -> AssertionError:
  """The AssertionError of a failed check: a first line that names the diagnosis, the
  report's ``text`` once, the reproducer's path; ``bpref_report`` and ``bpref_reproducer``
  ride along."""
  if report.verdict == "fail":
    code = f" [{report.codes[0] if report.codes else report.kind}]"  # the most likely diagnosis
    head = f"{what}{code}: {whose} is wrong"
  else:
    head = f"{what}: {whose} could not be judged (no verdict)"
  where = (f"\n\nreproducer: {path}" if path else
           "\n\nreproducer: not written to a file (it is the error's bpref_report.reproducer)"
           if report.reproducer else "")
  err = AssertionError(f"{head}\n{text}{where}")
  err.bpref_report = report
  err.bpref_reproducer = path
  return err


def write_reproducer(script: str, path=None, name: str = "candidate") -> str | None:
  """Write ``script`` to ``path``, or to a file named after the running test (or ``name``)
  in $BPREF_REPRODUCER_DIR or the temporary directory; its absolute path, or None when
  there is none to write, ``path`` is False, or the file cannot be written (the report
  still holds the script)."""
  if not script or path is False:
    return None
  if path is None:
    folder = os.environ.get(ENV_REPRODUCER_DIR) or os.path.join(tempfile.gettempdir(),
                                                                 "bpref-reproducers")
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]  # "file::test (call)"
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", test or name).strip("_.")[:80] or "candidate"
    digest = hashlib.sha1((test or name).encode()).hexdigest()[:8]
    path = os.path.join(folder, f"repro_{stem}_{digest}.py")
  path = os.path.abspath(os.fspath(path))
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
      fh.write(script)
  except OSError:
    return None
  return path


_PLACEHOLDER = "candidate = ...  #"


def _runnable(script: str, candidate) -> str:
  """``script`` with its ``candidate = ...`` line loading ``candidate`` by its import path,
  when it is a module-level function of an importable module (else left to fill in)."""
  module = sys.modules.get(getattr(candidate, "__module__", None) or "")
  name = getattr(candidate, "__qualname__", "")
  if module is None or not name.isidentifier() or getattr(module, name, None) is not candidate:
    return script
  file = getattr(module, "__file__", None)
  if not file:
    return script
  root = os.path.abspath(file)
  for _ in module.__name__.split("."):  # up from the file to the folder the dotted name starts in
    root = os.path.dirname(root)
  if os.path.basename(file) == "__init__.py":
    root = os.path.dirname(root)
  paths = list(dict.fromkeys([root, os.getcwd()]))
  load = (f"sys.path[:0] = {paths!r}  # where the test run imported {module.__name__}\n"
          f"from bpref.oracle.isolation import load_target\n"
          f"candidate = load_target({module.__name__ + ':' + name!r})\n")
  lines = script.splitlines(keepends=True)
  for i, line in enumerate(lines):
    if line.startswith(_PLACEHOLDER):
      lines[i] = load
      return "".join(lines)
  return script


def _name(candidate) -> str:
  return getattr(candidate, "__qualname__", None) or type(candidate).__name__
