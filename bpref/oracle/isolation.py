"""Calling the candidate safely: in this process, or in subprocesses.

Whatever the candidate does (raise anything, even ``SystemExit`` or
``KeyboardInterrupt``; hang; crash or end the interpreter; print; return
garbage; write into its input arrays), the call ends in an ``Outcome``; the
oracle never sees the exception itself.

* In process, the call runs in a daemon thread joined with a timeout. A hung
  call cannot be stopped there, so the search ends at the first timeout. This
  mode trusts the candidate: code that patches bpref when it is imported changes
  the oracle, and an exit in C code ends the process (an ``os._exit`` raises in the
  call instead, ``exits_refused``).
* ``Isolated`` runs the candidate in spawned subprocesses (one per worker).
  A hang is ended by killing the process, a crash in native code or an early
  exit is reported with its exit status or signal, and a fresh process takes
  over. The candidate's module is imported only there, and what comes back is
  unpickled with a loader that accepts plain data only (arrays, numbers,
  strings), so the verdict is computed in a process the candidate never ran in.
  This protects the verdict from accidents and from code that patches bpref in
  memory; it is not a sandbox against code written to attack the machine.

Either way, what the candidate writes to file descriptors 1 and 2 (``print``,
C-level writes, warnings) is captured, up to ``OUTPUT_LIMIT`` characters per
call and stream, and returned with the ``Outcome``; ``recording`` collects it
for the report.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import dataclasses
import faulthandler
import functools
import importlib
import importlib.util
import io
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import sysconfig
import tempfile
import threading
import time
import traceback
from multiprocessing.connection import wait
from typing import Callable, NamedTuple

import numpy as np

OUTPUT_LIMIT = 4000
"""Bytes of the candidate's stdout, and of its stderr, kept per call (and in the report)."""

WORKER_NAME = "bpref-candidate"
"""Name prefix of the subprocesses running the candidate."""

_MODULE_PREFIX = "_bpref_candidate_"
"""Prefix of the module name a candidate file is imported under (not shown in messages)."""

REIMPORT_EXIT = 86
"""Exit status of a worker that found itself re-running the caller's unguarded script."""


class CandidateExit(BaseException):
  """Raised in place of ``os._exit`` while a candidate runs in this process (``exits_refused``)."""


@contextlib.contextmanager
def exits_refused():
  """While active, ``os._exit(n)`` raises ``CandidateExit`` instead of ending the process.

  A candidate run in this process (the Python API's default, a user's pytest suite) that calls
  ``os._exit(0)`` would otherwise end the caller with status 0, its later tests never run: here
  its call fails with the exit named. An exit in C code (``posix._exit``, ctypes) is not
  covered; ``isolate=True`` covers that too.
  """
  real = os._exit

  def refuse(n=0):
    raise CandidateExit(f"the candidate called os._exit({n}), which would have ended this process")

  os._exit = refuse
  try:
    yield
  finally:
    os._exit = real


class MainReimportError(RuntimeError):
  """``check`` ran inside a spawned subprocess while it re-imported the caller's ``__main__``."""


class Outcome(NamedTuple):
  """What one candidate call produced.

  Attributes:
    status: "ok", "exception", "timeout" or "crash".
    result: for "ok", the returned value with arrays converted to NumPy.
    error: for "exception", the exception's type and message, then the last frames of its
      traceback; otherwise why the call ended.
    mutated: names of the input arrays the candidate modified.
    seconds: wall time of the call.
    stdout, stderr: what the call wrote to file descriptors 1 and 2 (clipped to OUTPUT_LIMIT).
  """
  status: str
  result: object = None
  error: str = ""
  mutated: tuple = ()
  seconds: float = 0.0
  stdout: str = ""
  stderr: str = ""


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


def exception_text(exc: BaseException, frames: int = 5) -> str:
  """'Type: message', then the last ``frames`` frames of the traceback; never raises."""
  try:
    te = traceback.TracebackException.from_exception(exc)
    head = "".join(te.format_exception_only()).strip().removeprefix(_MODULE_PREFIX)
    own = [f for f in te.stack if f.filename != __file__]  # the candidate's frames, not the caller's
    stack = "".join(traceback.StackSummary.from_list(own).format()[-frames:]).rstrip() if frames else ""
  except BaseException:  # an exception whose printing fails is still named
    return f"{type(exc).__name__} (its message could not be printed)"
  if not stack:
    return head
  return f"{head}\nTraceback (most recent call last, last frames only):\n{stack}"


def call_direct(candidate, inputs) -> Outcome:
  """Call the candidate in this thread; never raises for what the candidate does.

  Every exception counts, ``BaseException`` subclasses included: a ``SystemExit`` or
  ``KeyboardInterrupt`` raised by the candidate is its failure, reported by name.
  """
  return _called(lambda: candidate(inputs["weights"], inputs["biases"], inputs["activations"],
                                   inputs["loss"], inputs["x"], inputs["t"]), _snapshot(inputs))


def _arrays_in(arg) -> list:
  if isinstance(arg, np.ndarray):
    return [arg]
  if isinstance(arg, tuple):
    return [a for item in arg for a in _arrays_in(item)]
  return []


def call_args(fn, args) -> Outcome:
  """``fn(*args)`` in this thread, ``mutated`` naming the positions of the arrays it wrote into.

  The op oracle's call (``bpref.oracle.ops``): the arguments are a tuple of arrays and None.
  """
  snapshot = [(i, a, a.copy()) for i, arg in enumerate(args)
              for a in _arrays_in(arg)]  # a cache tuple's arrays count as its position's
  return _called(lambda: fn(*args), snapshot)


def _called(call, snapshot) -> Outcome:
  """The ``Outcome`` of ``call()``, its inputs' ``snapshot`` compared after; never raises."""
  start = time.perf_counter()
  try:
    raw = call()
    seconds = time.perf_counter() - start
    result = _to_numpy(raw)
  except BaseException as exc:  # the candidate's failure is data, not the oracle's
    return Outcome("exception", error=exception_text(exc), mutated=_mutated(snapshot),
                   seconds=time.perf_counter() - start)
  return Outcome("ok", result=result, mutated=_mutated(snapshot), seconds=seconds)


# ---------------------------------------------------------------- the candidate's output

@functools.lru_cache(maxsize=None)
def _libc():
  try:
    return ctypes.CDLL(None)
  except OSError:  # no C library to flush on this platform
    return None


def _flush_streams() -> None:
  """Python's and C's buffered output written out to where file descriptors 1 and 2 point now."""
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except Exception:  # a closed or replaced stream: nothing of ours to flush
      pass
  libc = _libc()
  if libc is not None:
    try:
      libc.fflush(None)
    except Exception:
      pass


def _writes_to(stream, fd: int) -> bool:
  try:
    return stream.fileno() == fd
  except Exception:  # a stream without a descriptor of its own
    return False


def read_from(fh, offset: int) -> tuple:
  """(text written to the open file ``fh`` from ``offset`` on, at most OUTPUT_LIMIT bytes; its end)."""
  try:
    end = os.fstat(fh.fileno()).st_size
    fh.seek(offset)
    data = fh.read(min(max(end - offset, 0), OUTPUT_LIMIT))
  except (OSError, ValueError):
    return "", offset
  text = data.decode("utf-8", "replace")
  if end - offset > len(data):
    text += f"\n[... {end - offset - len(data)} more bytes not kept]\n"
  return text, end


class Captured:
  """File descriptors 1 and 2 sent to temporary files for the duration of a ``with`` block.

  C-level writes are caught with Python's: the descriptors themselves are redirected, and
  Python's and C's buffers are flushed on entry and exit. Where ``sys.stdout`` or
  ``sys.stderr`` does not write to its descriptor (pytest's capture, a notebook's streams), it
  is replaced for the block by one that does. Afterwards ``stdout`` and ``stderr`` hold what
  was written (clipped to OUTPUT_LIMIT bytes). The redirection is process-wide: what other
  threads write meanwhile is caught too. Without descriptors 1 and 2, nothing is caught.
  """

  def __init__(self):
    self.stdout = self.stderr = ""
    self._saved = []  # (fd, duplicate of the original, temporary file)
    self._streams = None  # ((sys.stdout, sys.stderr) as they were, those of the block)

  def __enter__(self):
    _flush_streams()
    try:
      for fd in (1, 2):
        tmp = tempfile.TemporaryFile()
        try:
          saved = os.dup(fd)
        except OSError:
          tmp.close()
          raise
        self._saved.append((fd, saved, tmp))
        os.dup2(tmp.fileno(), fd)
    except OSError:  # no descriptor 1 or 2 here: leave them as they are
      self._restore()
      return self
    kept = (sys.stdout, sys.stderr)
    ours = tuple(stream if _writes_to(stream, fd) else
                 open(fd, "w", closefd=False, errors="replace")
                 for stream, fd in zip(kept, (1, 2)))
    self._streams = (kept, ours)
    sys.stdout, sys.stderr = ours
    return self

  def _restore(self) -> list:
    if self._streams is not None:
      kept, ours = self._streams
      for stream, was in zip(ours, kept):
        if stream is not was:
          stream.close()  # flushed into its descriptor, which stays open
      sys.stdout, sys.stderr = kept
      self._streams = None
    texts = []
    for fd, saved, tmp in self._saved:
      os.dup2(saved, fd)
      os.close(saved)
      texts.append(read_from(tmp, 0)[0])
      tmp.close()
    self._saved = []
    return texts

  def __exit__(self, *exc):
    _flush_streams()
    texts = self._restore()
    if len(texts) == 2:
      self.stdout, self.stderr = texts


class Transcript:
  """The candidate's output over all calls: the first OUTPUT_LIMIT bytes of each stream.

  Attributes:
    stdout, stderr: the text kept.
    calls: calls (and loads) that wrote anything.
    clipped: whether some output was left out.
  """

  def __init__(self):
    self.stdout = self.stderr = ""
    self.calls = 0
    self.clipped = False

  def add(self, stdout: str, stderr: str) -> None:
    if not (stdout or stderr):
      return
    self.calls += 1
    self.stdout, clip_out = _append(self.stdout, stdout)
    self.stderr, clip_err = _append(self.stderr, stderr)
    self.clipped = self.clipped or clip_out or clip_err or "more bytes not kept]" in stdout + stderr

  def to_json(self) -> dict:
    """{} when the candidate wrote nothing; else stdout, stderr, calls and clipped."""
    if not self.calls:
      return {}
    return {"stdout": self.stdout, "stderr": self.stderr, "calls": self.calls,
            "clipped": self.clipped}


def _append(kept: str, new: str) -> tuple:
  room = OUTPUT_LIMIT - len(kept)
  if len(new) <= room:
    return kept + new, False
  return kept + new[:max(room, 0)], True


_TRANSCRIPT = contextvars.ContextVar("bpref_transcript", default=None)


@contextlib.contextmanager
def recording():
  """Collect the output of every candidate call made inside the block into a ``Transcript``."""
  transcript = Transcript()
  token = _TRANSCRIPT.set(transcript)
  try:
    yield transcript
  finally:
    _TRANSCRIPT.reset(token)


def record(stdout: str, stderr: str) -> None:
  """The output of one call or load of the candidate, added to the ``Transcript`` of the
  ``recording`` block the calling thread runs in (nothing outside one). Every transport
  records what its calls wrote, so a check's report shows it however the candidate ran (on a
  Dask cluster, where ``bpref.oracle.cluster`` can catch it)."""
  transcript = _TRANSCRIPT.get()
  if transcript is not None:
    transcript.add(stdout, stderr)


class NetworkCall(NamedTuple):
  """A network case for the candidate, W_l sent in ``layout``: the message every transport takes
  for a network check. Each transport encodes it for its medium: the Python ones as the
  candidate's arguments (``plain_message``: NumPy arrays, so that a subprocess need not import
  bpref's search), a program over bpref-wire as a case message."""
  case: object  # a spec.Case
  layout: str


def plain_message(message):
  """``message`` as a Python transport sends it: a ``NetworkCall`` as the candidate's arguments
  (``candidate_inputs``), anything else (an op's call) as it is."""
  if isinstance(message, NetworkCall):
    return candidate_inputs(message.case, message.layout)
  return message


def answer(candidate, message) -> Outcome:
  """One call of the candidate, whatever the transport: ``message`` is a network's arguments
  (``plain_message``) or an op's ("backward" or "forward", args)."""
  message = plain_message(message)
  if isinstance(message, tuple):
    return call_args(getattr(candidate, message[0]), message[1])
  return call_direct(candidate, message)


class _CandidateThread:
  """The one daemon thread that makes every in-process call of a candidate, as the candidate's
  own program would: a library that keeps state per thread (tinygrad's kernel cache in an
  sqlite connection, a thread-bound context) finds the thread it set that state up on. A call
  that does not return within its timeout cannot be stopped: its thread is left to it and the
  next call starts a fresh one. Calls from several threads take turns, each timed from its start."""

  def __init__(self):
    self._lock = threading.Lock()
    self._thread = None
    self._inbox = None

  def call(self, fn: Callable, timeout: float) -> tuple:
    """(returned, box): ``fn()`` run on the candidate's thread, waited for up to ``timeout``
    seconds; ``box`` holds its value once it returned, and is empty if it raised past it."""
    if threading.current_thread() is self._thread:  # a candidate that runs a check itself
      return True, [fn()]
    with self._lock:
      if self._thread is None or not self._thread.is_alive():
        self._inbox = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, args=(self._inbox,), daemon=True,
                                        name=WORKER_NAME)
        self._thread.start()
      box, done = [], threading.Event()
      self._inbox.put((fn, box, done))
      if done.wait(timeout):
        return True, box
      self._thread = None
      return False, box

  @staticmethod
  def _serve(inbox) -> None:
    while True:
      fn, box, done = inbox.get()
      try:
        box.append(fn())
      finally:
        done.set()


_CANDIDATE_THREAD = _CandidateThread()


def call_in_thread(candidate, message, timeout: float) -> Outcome:
  """``answer`` on the candidate's thread (``_CandidateThread``), given up after ``timeout``
  seconds; its output captured."""
  with Captured() as out:
    returned, box = _CANDIDATE_THREAD.call(lambda: answer(candidate, message), timeout)
  if not returned:
    outcome = Outcome("timeout", error=f"the call did not return within {timeout:g} s; a call in "
                      "this process cannot be stopped, so the search ended here (isolate=True runs "
                      "the candidate in a subprocess that can be; bpref check does, unless "
                      "--in-process)", seconds=timeout)
  elif not box:
    outcome = Outcome("exception", error="the candidate's thread ended without a result")
  else:
    outcome = box[0]
  outcome = outcome._replace(stdout=out.stdout, stderr=out.stderr)
  record(outcome.stdout, outcome.stderr)
  return outcome


class InProcess:
  """The candidate called in this process, one call at a time in a daemon thread: the
  transport of ``Isolated``'s ``map``, for a candidate that runs where the search runs. A call
  that hangs cannot be stopped, so ``map`` ends at it and ``stopped`` says so."""

  workers = 1

  def __init__(self, candidate, timeout: float):
    self.candidate, self.timeout = candidate, timeout
    self.stopped = ""

  def map(self, messages) -> list:
    outcomes = []
    for message in messages:
      outcomes.append(call_in_thread(self.candidate, message, self.timeout))
      if outcomes[-1].status == "timeout":
        self.stopped = outcomes[-1].error
        break
    return outcomes


# ---------------------------------------------------------------- loading candidates by name

def _is_path(where: str) -> bool:
  return where.endswith(".py") or os.sep in where


def absolute_target(ref: str) -> str:
  """``ref`` with a file path made absolute (``module:attr`` is returned as it is)."""
  where, sep, attr = ref.rpartition(":")
  if sep and where and _is_path(where):
    return f"{os.path.abspath(where)}:{attr}"
  return ref


def load_target(ref: str):
  """The object named by ``module:attr`` or ``path/to/file.py:attr``.

  Raises ValueError (a usage error) when it cannot be found, or when importing it raised
  anything, ``SystemExit`` included.
  """
  if ":" not in ref:
    raise ValueError(f"{ref!r}: name the candidate as module:function or path/to/file.py:function")
  where, _, attr = ref.rpartition(":")
  if not where or not attr:
    raise ValueError(f"{ref!r}: name the candidate as module:function or path/to/file.py:function")
  if _is_path(where):
    path = os.path.abspath(where)
    if not os.path.isfile(path):
      raise ValueError(f"{where}: no such file")
    name = _MODULE_PREFIX + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    directory = os.path.dirname(path)
    if directory not in sys.path:
      sys.path.insert(0, directory)
    try:
      spec.loader.exec_module(module)
    except BaseException as exc:  # SystemExit at import is a failed import, not an exit
      raise ValueError(f"{where}: importing it failed: {_one_line(exc)}") from None
  else:
    if os.getcwd() not in sys.path and "" not in sys.path:
      sys.path.insert(0, os.getcwd())
    try:
      module = importlib.import_module(where)
    except BaseException as exc:
      raise ValueError(f"module {where!r} could not be imported: {_one_line(exc)}") from None
  try:
    return getattr(module, attr)
  except AttributeError:
    raise ValueError(f"{where} has no attribute {attr!r}") from None


def _one_line(exc: BaseException) -> str:
  return exception_text(exc, frames=0).splitlines()[0]


def load_candidate(kind: str, ref: str, reduction: str = "mean"):
  """The candidate callable: ``kind`` "function" loads it; a bridge name wraps a model factory.

  For a bridge, ``ref`` names a factory returning the model, and the candidate is
  ``bpref.bridges.<kind>.make_candidate(model, reduction=reduction)``.
  """
  obj = load_target(ref)
  if not callable(obj):
    raise ValueError(f"{ref} is a {type(obj).__name__}, not a callable")
  if kind == "function":
    return obj
  from bpref import bridges as _bridges  # only a bridge candidate needs the bridges

  if kind not in _bridges.BRIDGES:
    raise ValueError(f"unknown candidate kind {kind!r}; valid: function, {', '.join(_bridges.BRIDGES)}")
  try:
    bridge = importlib.import_module(f"bpref.bridges.{kind}")
  except ImportError as exc:
    raise ValueError(f"--{kind} needs bpref.bridges.{kind} and {kind} installed "
                     f"(pip install 'bpref[{kind}]'): {exc}") from None
  try:
    model = obj()
  except BaseException as exc:
    raise ValueError(f"{ref}() raised {_one_line(exc)}") from None
  try:
    return bridge.make_candidate(model, reduction=reduction)
  except (TypeError, ValueError) as exc:
    raise ValueError(f"{kind} bridge: {exc}") from None


def load_captured(kind: str, ref: str, reduction: str = "mean"):
  """``load_candidate`` in this process, with what the import writes captured and recorded."""
  out = Captured()
  try:
    with out:
      return load_candidate(kind, ref, reduction)
  finally:
    record(out.stdout, out.stderr)


# ---------------------------------------------------------------- what comes back from a worker

_DATA_GLOBALS = frozenset({
    ("builtins", "complex"), ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
    (__name__, "Outcome"),
})


class _DataUnpickler(pickle.Unpickler):
  """Rebuilds plain data only: NumPy arrays and scalars, builtins, ``Outcome``; no other code runs."""

  def find_class(self, module, name):
    if (module, name) in _DATA_GLOBALS:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(f"{module}.{name} is not plain data")


def _loads(data: bytes):
  return _DataUnpickler(io.BytesIO(data)).load()


def _dumps(message) -> bytes:
  return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def _plain_item(obj):
  if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes, np.generic)):
    return obj
  if isinstance(obj, np.ndarray):
    return plain(obj)
  try:
    return f"<{type(obj).__name__}: {obj!r}>"[:200]
  except BaseException:
    return f"<{type(obj).__name__}>"


def plain(obj):
  """A ``_to_numpy`` result made of plain data: objects inside object arrays become their repr."""
  if isinstance(obj, list):
    return [plain(o) for o in obj]
  if isinstance(obj, np.ndarray) and obj.dtype == object:
    out = np.empty(obj.shape, dtype=object)
    for index in np.ndindex(obj.shape):
      out[index] = _plain_item(obj[index])
    return out
  return _plain_item(obj) if not isinstance(obj, np.ndarray) else obj


# ---------------------------------------------------------------- subprocesses

def refuse_reimport() -> None:
  """Stop a spawned subprocess that is re-running the caller's unguarded script.

  multiprocessing's "spawn" start method imports the parent's ``__main__`` module again in every
  subprocess, before the subprocess does its work. A script that calls ``bpref.oracle.check`` at
  top level, without an ``if __name__ == "__main__":`` guard, would start another check there.
  In bpref's own worker this ends the subprocess at once with status REIMPORT_EXIT, which the
  parent turns into a ``MainReimportError`` naming the fix; in any other spawned subprocess it
  raises that error.
  """
  proc = multiprocessing.current_process()
  if not getattr(proc, "_inheriting", False):
    return
  if proc.name.startswith(WORKER_NAME + "-"):
    os._exit(REIMPORT_EXIT)
  raise MainReimportError(
      "bpref.oracle.check was called while this subprocess was importing its parent's __main__ "
      "module (multiprocessing's spawn start method does that); put the script's top-level code "
      "under `if __name__ == \"__main__\":`")


def _reimport_message() -> str:
  main = sys.modules.get("__main__")
  path = getattr(main, "__file__", None) or "the __main__ module"
  return (f"the candidate's subprocess ran {path} again: multiprocessing's spawn start method "
          "imports the __main__ module in every subprocess, and this one calls bpref.oracle.check "
          "at import. Put the script's top-level code under `if __name__ == \"__main__\":` (see "
          "docs/oracle.md), or check without isolate and workers")


def _main_hint() -> str:
  main = sys.modules.get("__main__")
  if getattr(main, "__spec__", None) is None and str(getattr(main, "__file__", "")).endswith(".py"):
    return (f"; if {main.__file__} runs code at import, keep it under "
            "`if __name__ == \"__main__\":` (each subprocess imports the script again)")
  return ""


def _redirect_output(out_path: str, err_path: str) -> None:
  """File descriptors 1 and 2 of this process appended to the two files, for good."""
  _flush_streams()
  for fd, path in ((1, out_path), (2, err_path)):
    f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(f, fd)
    os.close(f)
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.reconfigure(line_buffering=True)
    except Exception:  # not a text stream we can reconfigure
      pass


def _load_in_worker(conn, target):
  """In a subprocess: the candidate of ``target`` loaded, and "ready" (with what is known of
  it) or "load_error" sent back; None when loading raised."""
  info = None
  try:
    if _preloading(target):
      candidate = _preload(target[1])
    elif isinstance(target, tuple) and target and target[0] == "named":
      candidate = load_candidate(*target[1:])
    elif isinstance(target, tuple) and target and target[0] == "made":
      candidate = pickle.loads(target[1])()  # a factory that loads and adapts it here
      info = {"forward": getattr(candidate, "forward", None) is not None}
    else:
      candidate = pickle.loads(target)
  except BaseException as exc:
    _flush_streams()
    conn.send_bytes(_dumps(("load_error", _one_line(exc))))
    return None
  _flush_streams()
  conn.send_bytes(_dumps(("ready", info, installed_modules())))
  return candidate


def _preloading(target) -> bool:
  return isinstance(target, tuple) and len(target) == 2 and target[0] == "preload"


def _preload(names) -> Callable:
  """``names`` imported ahead of the first candidate, each only where it is an installed
  package (one found elsewhere, or that fails to import, is passed over: the candidate's own
  load says what is wrong); a placeholder candidate that refuses calls."""
  roots = _installed_roots()
  for name in names:
    try:
      spec = importlib.util.find_spec(name)
      if spec is not None and _installed(spec.origin, roots):
        importlib.import_module(name)
    except BaseException:  # a package's import may exit or raise anything
      pass
  return _no_candidate


def _no_candidate(*args):
  raise RuntimeError("no candidate is loaded in this subprocess yet")


def installed_modules() -> list:
  """The top-level modules this process imported from the interpreter's installed packages
  (site-packages), in import order: what a later worker may import before its first candidate.
  The project's own modules (the candidate's, its tests') are never among them."""
  roots = _installed_roots()
  return [name for name, module in list(sys.modules.items())
          if "." not in name and not name.startswith("_")
          and _installed(getattr(module, "__file__", None), roots)]


def _installed_roots() -> set:
  paths = sysconfig.get_paths()
  return {os.path.realpath(paths[key]) + os.sep for key in ("purelib", "platlib")}


def _installed(path, roots) -> bool:
  """Whether the file ``path`` lies in one of the interpreter's site-packages ``roots``."""
  return bool(path) and isinstance(path, str) and any(
      os.path.realpath(path).startswith(root) for root in roots)


def _worker_main(conn, target, out_path, err_path) -> None:
  """A subprocess: load the candidate, then answer calls until told to stop.

  Ctrl-C is the parent's to handle; what the candidate writes goes to the two files the parent
  reads after each call; a crash in native code leaves its Python traceback there (faulthandler).
  """
  try:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
  except ValueError:  # not the main thread
    pass
  _redirect_output(out_path, err_path)
  faulthandler.enable()
  candidate = _load_in_worker(conn, target)
  if candidate is None:
    return
  while True:
    try:
      message = conn.recv()
    except (EOFError, OSError):
      return
    if message is None:
      return
    if isinstance(message, tuple) and message[0] == "load":  # ("load", target, sys.path)
      sys.path[:] = list(dict.fromkeys([*message[2], *sys.path]))
      candidate = _load_in_worker(conn, message[1]) or candidate
      continue
    outcome = answer(candidate, message)
    _flush_streams()
    try:
      payload = _dumps(("outcome", outcome._replace(result=plain(outcome.result))))
    except BaseException as exc:  # a result that cannot be pickled even as plain data
      payload = _dumps(("outcome", Outcome(
          "exception", error=f"the candidate's result could not be sent back: {_one_line(exc)}",
          mutated=outcome.mutated, seconds=outcome.seconds)))
    conn.send_bytes(payload)


def _exit_text(code) -> str:
  if code is None:
    return "the subprocess stopped answering"
  if code < 0:
    try:
      return f"the subprocess was killed by signal {signal.Signals(-code).name}"
    except ValueError:
      return f"the subprocess was killed by signal {-code}"
  return f"the subprocess exited with status {code}"


@dataclasses.dataclass
class _Worker:
  proc: object
  conn: object
  out: object  # the capture files, open for reading
  err: object
  offsets: list  # bytes of out and err already read
  ready: bool = False  # the candidate is loaded


class Isolated:
  """A pool of subprocesses running the candidate; results come back in order.

  The subprocesses start at once, so that they import while this process builds the first
  cases. Each one's file descriptors 1 and 2 go to files the parent reads after every call, so
  the output of a call that crashed or hung is kept too; nothing the candidate writes reaches the
  parent's stdout.

  Args:
    target: the candidate pickled (bytes), ("named", kind, "module:function"), or ("made",
      a pickled factory) whose call in the subprocess returns the candidate (an op's
      ``OpCandidate``: each call is then ("backward" or "forward", args), and ``info`` says
      whether the candidate has a forward), or ("preload", module names): a worker started
      ahead of its candidate, importing those modules until ``load`` gives it one.
    workers: number of subprocesses.
    timeout: seconds one call may take; the process is then killed and replaced.
  """

  def __init__(self, target, workers: int = 1, timeout: float = 60.0):
    self._target = target
    self._timeout = timeout
    self._ctx = multiprocessing.get_context("spawn")
    self.workers = workers
    self._procs = [None] * workers
    self._dir = tempfile.TemporaryDirectory(prefix="bpref-candidate-")
    self._started = 0
    self.info = None  # what the first worker said of the candidate when it was loaded
    self.installed = []  # the installed packages a worker had imported once a candidate loaded
    for i in range(workers):
      self._spawn(i)

  def _spawn(self, i):
    self._started += 1
    paths = [os.path.join(self._dir.name, f"{i}-{self._started}.{stream}")
             for stream in ("stdout", "stderr")]
    files = []
    for path in paths:
      open(path, "wb").close()
      files.append(open(path, "rb"))
    parent, child = self._ctx.Pipe()
    proc = self._ctx.Process(target=_worker_main, args=(child, self._target, *paths), daemon=True,
                             name=f"{WORKER_NAME}-{i}")
    proc.start()
    child.close()
    self._procs[i] = _Worker(proc, parent, files[0], files[1], [0, 0])

  def _start(self, i):
    """Worker ``i`` ready to take calls: spawned if need be, its candidate loaded."""
    if self._procs[i] is None:
      self._spawn(i)
    if self._procs[i].ready:
      return
    proc, parent = self._procs[i].proc, self._procs[i].conn
    if not parent.poll(max(120.0, self._timeout)):
      self._kill(i)
      raise RuntimeError("the candidate's subprocess did not start within "
                         f"{max(120.0, self._timeout):g} s")
    try:
      kind, text, *installed = _loads(parent.recv_bytes())
    except (EOFError, OSError):
      proc.join(5)
      code = proc.exitcode
      self._kill(i)
      if code == REIMPORT_EXIT:
        raise MainReimportError(_reimport_message()) from None
      raise RuntimeError(f"the candidate's subprocess died while loading: {_exit_text(code)}"
                         f"{_main_hint()}") from None
    except Exception as exc:  # a forged message
      self._kill(i)
      raise RuntimeError(f"the candidate's subprocess sent something other than plain data while "
                         f"loading: {_one_line(exc)}") from None
    finally:
      if self._procs[i] is not None:
        record(*self._take_output(i))
    if kind != "ready":
      self._kill(i)
      raise ValueError(f"the candidate could not be loaded in a subprocess: {text}")
    self._procs[i].ready = True
    self.info = text
    if installed and not _preloading(self._target):
      self.installed = list(installed[0])

  def start(self):
    """The first worker started and its candidate loaded; what it said of the candidate (``info``).

    Raises ValueError when loading raised, RuntimeError when the subprocess died while loading.
    """
    self._start(0)
    return self.info

  def load(self, target, timeout: float | None = None) -> None:
    """Another candidate (``target``, as the constructor takes it) for the next calls, loaded in
    the running workers, which keep their imports: a session's checks pay for one process start.
    A worker that has ended starts with it. ``timeout`` replaces the seconds one call may take."""
    self._target = target
    if timeout is not None:
      self._timeout = timeout
    for i, w in enumerate(self._procs):
      if w is None:
        continue
      if not w.ready:  # its first load's answer is still to be read
        try:
          self._start(i)
        except (ValueError, RuntimeError):  # the earlier candidate's trouble: it started anew
          continue
      try:
        self._procs[i].conn.send(("load", target, list(sys.path)))
        self._procs[i].ready = False  # _start reads its "ready" or "load_error"
      except OSError:  # it ended since its last call
        self._kill(i)

  def fresh(self) -> None:
    """Every worker ended; the next call starts a fresh process that has seen no earlier call."""
    for i in range(len(self._procs)):
      self._kill(i)

  def _take_output(self, i) -> tuple:
    """(stdout, stderr) that worker ``i`` wrote since the last look."""
    w = self._procs[i]
    out, w.offsets[0] = read_from(w.out, w.offsets[0])
    err, w.offsets[1] = read_from(w.err, w.offsets[1])
    return out, err

  def _kill(self, i):
    entry = self._procs[i]
    if entry is None:
      return
    if entry.proc.is_alive():
      entry.proc.kill()
    entry.proc.join(5)
    record(*self._take_output(i))
    self._procs[i] = None
    entry.conn.close()
    entry.out.close()
    entry.err.close()

  def _receive(self, i, start) -> Outcome:
    """The outcome worker ``i`` sends, or why none came; a worker that crashed is dropped."""
    w = self._procs[i]
    try:
      kind, outcome = _loads(w.conn.recv_bytes())
      if kind != "outcome" or not isinstance(outcome, Outcome) or \
          outcome.status not in ("ok", "exception"):
        raise pickle.UnpicklingError("not an outcome")
    except (EOFError, OSError):
      w.proc.join(5)
      code = w.proc.exitcode
      out, err = self._take_output(i)
      self._kill(i)
      return Outcome("crash", error=f"{_exit_text(code)} before the call returned"
                     f"{' (os._exit, or an exit in C code)' if code is not None and code >= 0 else ''}",
                     seconds=time.perf_counter() - start, stdout=out, stderr=err)
    except Exception as exc:  # anything but an outcome: the worker is not to be trusted further
      out, err = self._take_output(i)
      self._kill(i)
      return Outcome("exception", error=f"the candidate's subprocess sent back something other "
                     f"than plain data: {_one_line(exc)}", seconds=time.perf_counter() - start,
                     stdout=out, stderr=err)
    out, err = self._take_output(i)
    return outcome._replace(stdout=out, stderr=err)

  def map(self, messages) -> list:
    """One ``Outcome`` per message (``answer``), in order; up to ``workers`` calls at a time."""
    inputs_list = [plain_message(m) for m in messages]
    results = [None] * len(inputs_list)
    pending = list(range(len(inputs_list)))[::-1]
    busy = {}  # worker index -> (item index, deadline, start)
    while pending or busy:
      for i in range(len(self._procs)):
        if i in busy or not pending:
          continue
        self._start(i)
        item = pending.pop()
        try:
          self._procs[i].conn.send(inputs_list[item])
        except OSError:  # the worker ended between calls (a thread of the candidate's, say)
          results[item] = self._receive(i, time.perf_counter())
          record(results[item].stdout, results[item].stderr)
          continue
        busy[i] = (item, time.monotonic() + self._timeout, time.perf_counter())
      if not busy:
        continue
      conns = {self._procs[i].conn: i for i in busy}
      soonest = min(deadline for _, deadline, _ in busy.values())
      ready = wait(list(conns), timeout=max(0.0, soonest - time.monotonic()))
      for conn in ready:
        i = conns[conn]
        item, _, start = busy.pop(i)
        results[item] = self._receive(i, start)
        record(results[item].stdout, results[item].stderr)
      now = time.monotonic()
      for i, (item, deadline, start) in list(busy.items()):
        if now >= deadline:
          busy.pop(i)
          self._procs[i].proc.kill()
          self._procs[i].proc.join(5)
          out, err = self._take_output(i)
          self._kill(i)
          results[item] = Outcome("timeout", error=f"the call did not return within {self._timeout:g} s;"
                                  " its subprocess was killed", seconds=self._timeout,
                                  stdout=out, stderr=err)
          record(out, err)
    return results

  def close(self):
    """Every worker ended: told to stop when it is idle, killed when it is still loading."""
    for i, entry in enumerate(self._procs):
      if entry is not None and entry.ready:
        try:
          entry.conn.send(None)
        except (OSError, BrokenPipeError):
          pass
        entry.proc.join(2)
      self._kill(i)
    self._dir.cleanup()

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
