"""Calling the candidate safely: in this process, or in subprocesses.

Whatever the candidate does (raise, hang, crash the interpreter, return
garbage, write into its input arrays), the call ends in an ``Outcome``; the
oracle never sees the exception itself.

* In process, the call runs in a daemon thread joined with a timeout. A hung
  call cannot be stopped there, so the search ends at the first timeout.
* ``Isolated`` runs the candidate in spawned subprocesses (one per worker).
  A hang is ended by killing the process, a crash in native code is reported
  with its exit code, and a fresh process takes over.
"""

from __future__ import annotations

import importlib
import importlib.util
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import wait
from typing import NamedTuple

import numpy as np

BRIDGES = ("torch", "flax", "equinox")


class Outcome(NamedTuple):
  """What one candidate call produced.

  Attributes:
    status: "ok", "exception", "timeout" or "crash".
    result: for "ok", the returned value with arrays converted to NumPy.
    error: the exception's text and traceback, or why the call ended.
    mutated: names of the input arrays the candidate modified.
    seconds: wall time of the call.
  """
  status: str
  result: object = None
  error: str = ""
  mutated: tuple = ()
  seconds: float = 0.0


def candidate_inputs(case, layout: str) -> dict:
  """The arguments handed to the candidate, fresh copies in its layout."""
  weights = [np.array(W.T if layout == "in_out" else W, copy=True) for W in case.weights]
  biases = None if case.biases is None else [np.array(b, copy=True) for b in case.biases]
  return {"weights": weights, "biases": biases, "activations": list(case.arch.activations),
          "loss": case.arch.loss, "x": np.array(case.x, copy=True), "t": np.array(case.t, copy=True)}


def _snapshot(inputs) -> list:
  out = []
  for l, W in enumerate(inputs["weights"], start=1):
    out.append((f"weights[{l - 1}] (W_{l})", W, W.copy()))
  for l, b in enumerate(inputs["biases"] or (), start=1):
    out.append((f"biases[{l - 1}] (b_{l})", b, b.copy()))
  out.append(("x", inputs["x"], inputs["x"].copy()))
  out.append(("t", inputs["t"], inputs["t"].copy()))
  return out


def _mutated(snapshot) -> tuple:
  changed = []
  for name, now, before in snapshot:
    now = np.asarray(now)
    if now.shape != before.shape or not np.array_equal(now, before, equal_nan=True):
      changed.append(name)
  return tuple(changed)


def _to_numpy(obj, depth=0):
  """The returned value with every array-like converted to a NumPy array."""
  if obj is None or isinstance(obj, (str, bool)):
    return obj
  if isinstance(obj, (int, float, np.number)):
    return obj
  if isinstance(obj, (tuple, list)) and depth < 3:
    return [_to_numpy(o, depth + 1) for o in obj]
  if hasattr(obj, "detach") and hasattr(obj, "cpu"):  # a torch tensor
    obj = obj.detach().cpu().numpy()
  return np.array(obj, copy=True)


def _describe_exception(exc: BaseException) -> str:
  tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
  return "".join(tb[-6:]).rstrip()


def call_direct(candidate, inputs) -> Outcome:
  """Call the candidate in this thread; never raises for what the candidate does."""
  snapshot = _snapshot(inputs)
  start = time.perf_counter()
  try:
    raw = candidate(inputs["weights"], inputs["biases"], inputs["activations"], inputs["loss"],
                    inputs["x"], inputs["t"])
    seconds = time.perf_counter() - start
    result = _to_numpy(raw)
  except Exception as exc:  # the candidate's failure is data, not the oracle's
    return Outcome("exception", error=_describe_exception(exc), mutated=_mutated(snapshot),
                   seconds=time.perf_counter() - start)
  return Outcome("ok", result=result, mutated=_mutated(snapshot), seconds=seconds)


def call_in_thread(candidate, inputs, timeout: float) -> Outcome:
  """``call_direct`` in a daemon thread, given up after ``timeout`` seconds."""
  box = []
  thread = threading.Thread(target=lambda: box.append(call_direct(candidate, inputs)), daemon=True,
                            name="bpref-candidate")
  thread.start()
  thread.join(timeout)
  if thread.is_alive() or not box:
    return Outcome("timeout", error=f"the call did not return within {timeout:g} s; a call in this "
                   "process cannot be stopped, so the search ended here (isolate=True, or --isolate, "
                   "runs the candidate in a subprocess that can be)", seconds=timeout)
  return box[0]


# ---------------------------------------------------------------- loading candidates by name

def load_reference(ref: str):
  """The object named by ``module:attr`` or ``path/to/file.py:attr``.

  Raises ValueError (a usage error) when it cannot be found.
  """
  if ":" not in ref:
    raise ValueError(f"{ref!r}: name the candidate as module:function or path/to/file.py:function")
  where, _, attr = ref.rpartition(":")
  if not where or not attr:
    raise ValueError(f"{ref!r}: name the candidate as module:function or path/to/file.py:function")
  if where.endswith(".py") or os.sep in where:
    path = os.path.abspath(where)
    if not os.path.isfile(path):
      raise ValueError(f"{where}: no such file")
    name = "_bpref_candidate_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    directory = os.path.dirname(path)
    if directory not in sys.path:
      sys.path.insert(0, directory)
    try:
      spec.loader.exec_module(module)
    except Exception as exc:
      raise ValueError(f"{where}: importing it failed: {type(exc).__name__}: {exc}") from None
  else:
    if os.getcwd() not in sys.path and "" not in sys.path:
      sys.path.insert(0, os.getcwd())
    try:
      module = importlib.import_module(where)
    except Exception as exc:
      raise ValueError(f"module {where!r} could not be imported: {type(exc).__name__}: {exc}") from None
  try:
    return getattr(module, attr)
  except AttributeError:
    raise ValueError(f"{where} has no attribute {attr!r}") from None


def load_candidate(kind: str, ref: str, reduction: str = "mean"):
  """The candidate callable: ``kind`` "function" loads it; a bridge name wraps a model factory.

  For a bridge, ``ref`` names a factory returning the model, and the candidate is
  ``bpref.bridges.<kind>.make_candidate(model, reduction=reduction)``.
  """
  obj = load_reference(ref)
  if not callable(obj):
    raise ValueError(f"{ref} is a {type(obj).__name__}, not a callable")
  if kind == "function":
    return obj
  if kind not in BRIDGES:
    raise ValueError(f"unknown candidate kind {kind!r}; valid: function, {', '.join(BRIDGES)}")
  try:
    bridge = importlib.import_module(f"bpref.bridges.{kind}")
  except ImportError as exc:
    raise ValueError(f"--{kind} needs bpref.bridges.{kind} and {kind} installed "
                     f"(pip install 'bpref[{kind}]'): {exc}") from None
  try:
    model = obj()
  except Exception as exc:
    raise ValueError(f"{ref}() raised {type(exc).__name__}: {exc}") from None
  try:
    return bridge.make_candidate(model, reduction=reduction)
  except (TypeError, ValueError) as exc:
    raise ValueError(f"{kind} bridge: {exc}") from None


# ---------------------------------------------------------------- subprocesses

def _worker_main(conn, target) -> None:
  """A subprocess: load the candidate, then answer calls until told to stop."""
  try:
    if isinstance(target, tuple) and target and target[0] == "reference":
      candidate = load_candidate(*target[1:])
    else:
      candidate = pickle.loads(target)
  except BaseException as exc:
    conn.send(("load_error", f"{type(exc).__name__}: {exc}"))
    return
  conn.send(("ready", None))
  while True:
    try:
      message = conn.recv()
    except (EOFError, OSError):
      return
    if message is None:
      return
    try:
      outcome = call_direct(candidate, message)
      conn.send(("outcome", outcome))
    except BaseException as exc:  # an unpicklable result, for instance
      conn.send(("outcome", Outcome("exception", error=f"the result could not be sent back: {exc}")))


def _exit_text(code) -> str:
  if code is None:
    return "the subprocess stopped answering"
  if code < 0:
    try:
      return f"the subprocess was killed by signal {signal.Signals(-code).name}"
    except ValueError:
      return f"the subprocess was killed by signal {-code}"
  return f"the subprocess exited with code {code}"


class Isolated:
  """A pool of subprocesses running the candidate; results come back in order.

  Args:
    target: the candidate pickled (bytes), or ("reference", kind, "module:function").
    workers: number of subprocesses.
    timeout: seconds one call may take; the process is then killed and replaced.
  """

  def __init__(self, target, workers: int = 1, timeout: float = 60.0):
    self._target = target
    self._timeout = timeout
    self._ctx = multiprocessing.get_context("spawn")
    self._procs = [None] * workers

  def _start(self, i):
    parent, child = self._ctx.Pipe()
    proc = self._ctx.Process(target=_worker_main, args=(child, self._target), daemon=True,
                             name=f"bpref-candidate-{i}")
    proc.start()
    child.close()
    self._procs[i] = (proc, parent)
    if not parent.poll(max(120.0, self._timeout)):
      self._kill(i)
      raise RuntimeError("the candidate's subprocess did not start within 120 s")
    try:
      kind, text = parent.recv()
    except EOFError:
      code = proc.exitcode
      self._kill(i)
      raise RuntimeError(f"the candidate's subprocess died while loading: {_exit_text(code)}") from None
    if kind != "ready":
      self._kill(i)
      raise ValueError(f"the candidate could not be loaded in a subprocess: {text}")

  def _kill(self, i):
    entry = self._procs[i]
    self._procs[i] = None
    if entry is None:
      return
    proc, conn = entry
    if proc.is_alive():
      proc.kill()
    proc.join(5)
    conn.close()

  def map(self, inputs_list) -> list:
    """One ``Outcome`` per inputs dict, in order; up to ``workers`` calls at a time."""
    results = [None] * len(inputs_list)
    pending = list(range(len(inputs_list)))[::-1]
    busy = {}  # worker index -> (item index, deadline, start)
    while pending or busy:
      for i in range(len(self._procs)):
        if i in busy or not pending:
          continue
        if self._procs[i] is None:
          self._start(i)
        item = pending.pop()
        self._procs[i][1].send(inputs_list[item])
        busy[i] = (item, time.monotonic() + self._timeout, time.perf_counter())
      conns = {self._procs[i][1]: i for i in busy}
      soonest = min(deadline for _, deadline, _ in busy.values())
      ready = wait(list(conns), timeout=max(0.0, soonest - time.monotonic()))
      for conn in ready:
        i = conns[conn]
        item, _, start = busy.pop(i)
        try:
          kind, outcome = conn.recv()
        except (EOFError, OSError):
          proc = self._procs[i][0]
          proc.join(5)
          code = proc.exitcode
          self._kill(i)
          outcome = Outcome("crash", error=_exit_text(code), seconds=time.perf_counter() - start)
        results[item] = outcome
      now = time.monotonic()
      for i, (item, deadline, start) in list(busy.items()):
        if now >= deadline:
          busy.pop(i)
          self._kill(i)
          results[item] = Outcome("timeout", error=f"the call did not return within {self._timeout:g} s;"
                                  " its subprocess was killed", seconds=self._timeout)
    return results

  def close(self):
    for i, entry in enumerate(self._procs):
      if entry is not None:
        try:
          entry[1].send(None)
        except (OSError, BrokenPipeError):
          pass
        entry[0].join(2)
        self._kill(i)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def picklable(candidate) -> bytes:
  """The candidate pickled for a subprocess; TypeError says how to make it picklable."""
  try:
    return pickle.dumps(candidate)
  except Exception as exc:
    raise TypeError(
        f"isolate/workers run the candidate in a subprocess, which needs it picklable "
        f"(a module-level function, or functools.partial of one); {candidate!r} is not: {exc}. "
        "From the command line, name it as module:function instead.") from None
