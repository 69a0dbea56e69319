"""A candidate in any language: a process that speaks bpref-wire (docs/protocol.md).

``bpref check --exec "./mybp"`` starts the command once, exchanges hellos (the
protocol version; the activations, losses, dtypes, layouts and reductions the
candidate implements) and then sends it one case at a time on its stdin,
reading the gradients back from its stdout. The oracle behind it is the one of
``bpref.oracle.check``: probes, search, shrinking, diagnosis, the same truth and
tolerance.

Whatever the process does ends in a failure of its own kind, never in a pass and
never in a hang of bpref:

* it exits or is killed before it replied (``crash``: the exit status or the
  signal, and how much of the reply had come); the next call starts it again;
* it does not reply within ``timeout`` seconds (``timeout``): its process group is
  killed and the next call starts it again;
* it writes something that is not a bpref-wire reply to the case it was sent
  (``protocol``: a malformed header, an unknown array, garbage on stdout, the
  wrong id): it is stopped and started again, since its stream is out of step;
* it replies with an error message (``exception``), and carries on.

A reply with a wrong shape, dtype or non-finite entry is judged as a Python
candidate's would be (``shape``, ``dtype``, ``nonfinite``). What the process
writes to stderr is kept for the report, like a Python candidate's output.

A client of protocol version 2 may also implement single operations; those are
checked by ``bpref check --op KIND --exec COMMAND`` (``bpref.oracle.ops.wire_ops``),
over the same processes (``ExecPool.exchange``).
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import hashlib
import json
import os
import select
import shlex
import signal
import subprocess
import tempfile
import time

import numpy as np

from bpref.oracle import isolation as _isolation
from bpref.oracle import judge as _judge
from bpref.oracle import search as _search
from bpref.oracle import spec as _spec
from bpref.oracle import wire

BYE_GRACE = 2.0
"""Seconds a process may take to exit after bpref's bye before it is killed."""

_READ = 1 << 16


class ExecError(ValueError):
  """The candidate process cannot be run at all (it does not start, or its hello is refused)."""


def _signal_name(n: int) -> str:
  try:
    return signal.Signals(n).name
  except ValueError:
    return f"signal {n}"


def exit_text(code) -> str:
  """'exited with status 3' or 'was killed by signal SIGSEGV' for a Popen return code."""
  if code is None:
    return "was still running"
  if code < 0:
    return f"was killed by signal {_signal_name(-code)}"
  return f"exited with status {code}"


@dataclasses.dataclass
class _Proc:
  """One running candidate process and what has been read from it."""
  popen: subprocess.Popen
  err: object  # the file its stderr goes to, open for reading
  err_offset: int = 0
  buf: bytearray = dataclasses.field(default_factory=bytearray)
  header: dict | None = None  # the reply's header, once read
  layout: list | None = None  # its arrays
  need: int = 0  # payload bytes the header announced


@dataclasses.dataclass
class _Call:
  item: int
  ident: int
  out: bytes  # what is left to write
  deadline: float
  start: float


class _Failed(Exception):
  """A call or a start that ended without a reply: ``status`` (an Outcome status) and text."""

  def __init__(self, status: str, text: str):
    super().__init__(text)
    self.status = status


class ExecPool:
  """Candidate processes running ``command``; ``map`` sends cases and reads the gradients.

  ``exchange`` is the engine under ``map``: any message and any reply parser (an op's, in
  ``bpref.oracle.ops.wire_ops``), with the same processes, timeouts, crashes and restarts.

  Args:
    command: the command line, split like a POSIX shell would (``shlex``), run without a shell
      in its own process group.
    workers: processes running cases at the same time.
    timeout: seconds one case may take; also how long a starting process may take to say hello.
    cwd, env: for the process.

  What the processes write on stderr goes to the check's transcript (``isolation.record``).
  """

  def __init__(self, command: str, workers: int = 1, timeout: float = 60.0, cwd=None, env=None):
    try:
      self.argv = shlex.split(command)
    except ValueError as exc:
      raise ExecError(f"--exec {command!r}: cannot split the command line ({exc}); quote it as a "
                      "shell would") from None
    if not self.argv:
      raise ExecError("--exec needs a command, e.g. --exec ./mybp or --exec 'node mybp.js'")
    self.command = command
    self.timeout = float(timeout)
    self.cwd, self.env = cwd, env
    self.features = None  # the candidate's hello (wire.read_hello), once started
    self.starts = 0
    self._procs = [None] * max(1, int(workers))
    self._ident = 0
    self._dir = tempfile.TemporaryDirectory(prefix="bpref-exec-")

  # ------------------------------------------------------------ starting and stopping

  def _spawn(self) -> _Proc:
    self.starts += 1
    path = os.path.join(self._dir.name, f"stderr-{self.starts}")
    with open(path, "wb") as sink:
      try:
        popen = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=sink, cwd=self.cwd, env=self.env, start_new_session=True,
                                 bufsize=0)
      except OSError as exc:
        raise ExecError(f"--exec {self.command!r}: cannot start {self.argv[0]!r}: "
                        f"{exc.strerror or exc}; give the path of an executable (./mybp) or a "
                        "command on PATH") from None
    os.set_blocking(popen.stdin.fileno(), False)
    os.set_blocking(popen.stdout.fileno(), False)
    return _Proc(popen, open(path, "rb"))

  def start(self, i: int = 0) -> dict:
    """Process ``i`` started and its hello read: the features it declares (``wire.read_hello``).

    Raises ``_Failed`` when it exits, hangs or says something other than a hello.
    """
    proc = self._spawn()
    self._procs[i] = proc
    deadline = time.monotonic() + self.timeout
    try:
      self._write_all(proc, wire.hello(), deadline, "bpref's hello")
      header, _ = self._read_reply(proc, deadline, "its hello")
      features = wire.read_hello(header)
    except wire.WireError as exc:
      self._stop(i)
      raise _Failed("protocol", f"the candidate's process ({self.command}) did not answer bpref's "
                    f"hello as bpref-wire asks: {exc}") from None
    except _Failed:
      self._stop(i)
      raise
    self._take_stderr(proc)
    if self.features is not None and features != self.features:
      self._stop(i)
      raise _Failed("protocol", "the candidate's process declared other features when it was "
                    f"started again: {features} after {self.features}")
    self.features = features
    return features

  def greet(self) -> dict:
    """The first process started and its hello read (``start(0)``); ExecError, a usage error,
    when it does not start or its hello is refused."""
    try:
      return self.start(0)
    except _Failed as exc:
      raise ExecError(str(exc)) from None

  def _stop(self, i: int, gently: bool = False) -> None:
    proc = self._procs[i]
    if proc is None:
      return
    self._procs[i] = None
    if gently and proc.popen.poll() is None:
      try:
        os.set_blocking(proc.popen.stdin.fileno(), True)
        proc.popen.stdin.write(wire.BYE)
      except OSError:
        pass
      try:
        proc.popen.stdin.close()
      except OSError:
        pass
      try:
        proc.popen.wait(BYE_GRACE)
      except subprocess.TimeoutExpired:
        pass
    self._kill(proc)
    self._take_stderr(proc)
    for f in (proc.popen.stdin, proc.popen.stdout, proc.err):
      try:
        f.close()
      except OSError:
        pass

  @staticmethod
  def _kill(proc) -> None:
    if proc.popen.poll() is None:
      try:
        os.killpg(proc.popen.pid, signal.SIGKILL)
      except (ProcessLookupError, PermissionError):
        proc.popen.kill()
    try:
      proc.popen.wait(5)
    except subprocess.TimeoutExpired:
      pass

  def fresh(self) -> None:
    """Every process ended; the next case starts a fresh one that has seen no earlier case."""
    for i in range(len(self._procs)):
      self._stop(i, gently=True)

  def close(self) -> None:
    """Send every process bpref's bye, wait ``BYE_GRACE`` seconds, then kill what is left."""
    for i in range(len(self._procs)):
      self._stop(i, gently=True)
    self._dir.cleanup()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def _take_stderr(self, proc) -> str:
    text, proc.err_offset = _isolation.read_from(proc.err, proc.err_offset)
    _isolation.record("", text)
    return text

  # ------------------------------------------------------------ reading and writing

  def _died(self, proc, what: str) -> _Failed:
    """Why the process stopped answering while bpref waited for ``what``."""
    try:
      code = proc.popen.wait(1.0)
    except subprocess.TimeoutExpired:  # it closed stdout but lives on
      self._kill(proc)
      code = proc.popen.returncode
      how = "closed its stdout (and was then killed)"
    else:
      how = exit_text(code)
    part = self._received(proc)
    hint = " (an exit with status 0: did it stop reading cases early?)" if code == 0 else ""
    return _Failed("exited", f"the candidate's process ({self.command}) {how} before {what}"
                   f"{'; it wrote ' + part if part else ''}{hint}; {_AGAIN}")

  def _received(self, proc) -> str:
    """What the process sent of a reply it did not finish, in words; "" for nothing."""
    got = len(proc.buf)
    if proc.header is not None:
      return f"a partial reply: the header and {got} of the {proc.need} bytes of arrays it announced"
    if got:
      return f"{got} bytes of a header line and no newline: {wire.shown(bytes(proc.buf))}"
    return ""

  def _write_all(self, proc, data: bytes, deadline: float, what: str) -> None:
    fd = proc.popen.stdin.fileno()
    view = memoryview(data)
    while view:
      try:
        n = os.write(fd, view)
        view = view[n:]
        continue
      except BlockingIOError:
        pass
      except OSError as exc:
        if exc.errno in (errno.EPIPE, errno.EBADF):
          raise self._died(proc, f"it read {what}") from None
        raise
      left = deadline - time.monotonic()
      if left <= 0 or not select.select([], [fd], [], left)[1]:
        raise _Failed("timeout", f"the candidate's process ({self.command}) did not read {what} "
                      f"within {self.timeout:g} s; it was killed")

  def _parse(self, proc):
    """(header, arrays) of the reply in ``proc.buf`` once complete, else None; WireError."""
    buf = proc.buf
    if proc.header is None:
      end = buf.find(b"\n", 0, wire.MAX_HEADER)
      if end < 0:
        if len(buf) >= wire.MAX_HEADER:
          raise wire.WireError(f"no header line ends within {wire.MAX_HEADER} bytes: "
                               f"{wire.shown(bytes(buf))}")
        return None
      header = wire.parse_header(buf[:end])
      layout = wire.array_layout(header)
      del buf[:end + 1]
      proc.header, proc.layout, proc.need = header, layout, wire.payload_size(layout)
    if len(buf) < proc.need:
      return None
    arrays = wire.decode_arrays(proc.layout, bytes(buf[:proc.need]))
    del buf[:proc.need]
    header = proc.header
    proc.header, proc.layout, proc.need = None, None, 0
    return header, arrays

  def _read_reply(self, proc, deadline: float, what: str):
    fd = proc.popen.stdout.fileno()
    while True:
      got = self._parse(proc)
      if got is not None:
        return got
      left = deadline - time.monotonic()
      if left <= 0 or not select.select([fd], [], [], left)[0]:
        raise _Failed("timeout", f"the candidate's process ({self.command}) did not send {what} "
                      f"within {self.timeout:g} s; it was killed")
      data = os.read(fd, _READ)
      if not data:
        raise self._died(proc, f"it sent {what}")
      proc.buf += data

  # ------------------------------------------------------------ cases

  def map(self, calls) -> list:
    """One ``isolation.Outcome`` per ``isolation.NetworkCall``, in order.

    Up to ``workers`` cases run at a time, one per process. Never raises for what the
    processes do: a failure is the outcome of the case it happened on.
    """
    return self.exchange(calls, lambda call, ident: wire.case_message(*call, ident),
                         lambda header, arrays, call: wire.grads_result(header, arrays, call.case))

  def exchange(self, items, message, reply) -> list:
    """One ``isolation.Outcome`` per item, in order: the engine under every kind of message.

    Args:
      items: what is sent, one message each (a network's ``isolation.NetworkCall``, an op's
        arguments).
      message: ``message(item, ident) -> bytes``, the message for one item under its id.
      reply: ``reply(header, arrays, item) -> result``, the outcome's result read off a
        "grads" reply; it raises ``wire.WireError`` for a reply that does not fit the item.

    Up to ``workers`` items run at a time, one per process; a process that crashed, hung or
    broke the protocol is replaced for the next item. Never raises for what the processes do.
    """
    results = [None] * len(items)
    pending = collections.deque(range(len(items)))
    busy = {}  # process index -> _Call
    while pending or busy:
      for i in range(len(self._procs)):
        if i in busy or not pending:
          continue
        item = pending.popleft()
        start = time.perf_counter()
        if self._procs[i] is None:
          try:
            self.start(i)
          except _Failed as exc:
            results[item] = _isolation.Outcome(exc.status, error=f"{exc} (while starting it again "
                                               "for this case)", seconds=time.perf_counter() - start)
            continue
        self._ident += 1
        busy[i] = _Call(item, self._ident, message(items[item], self._ident),
                        time.monotonic() + self.timeout, start)
        self._push(i, busy, results)
      if busy:
        self._wait(busy, results, lambda header, arrays, item: reply(header, arrays, items[item]))
    return results

  def _finish(self, i, call, busy, results, status, text="", result=None) -> None:
    busy.pop(i, None)
    proc = self._procs[i]
    stderr = self._take_stderr(proc) if proc is not None else ""
    if status not in ("ok", "refused"):
      self._stop(i)
    results[call.item] = _isolation.Outcome(status, result=result, error=text,
                                            seconds=time.perf_counter() - call.start, stderr=stderr)

  def _push(self, i, busy, results) -> None:
    """Write what fits of process ``i``'s case into its stdin."""
    call = busy[i]
    proc = self._procs[i]
    try:
      n = os.write(proc.popen.stdin.fileno(), call.out)
      call.out = call.out[n:]
    except BlockingIOError:
      pass
    except OSError as exc:
      if exc.errno not in (errno.EPIPE, errno.EBADF):
        raise
      failed = self._died(proc, f"it read case {call.ident}")
      self._finish(i, call, busy, results, failed.status, str(failed))

  def _wait(self, busy, results, reply) -> None:
    """Wait for the busy processes until one can be read or written, or a deadline passes."""
    readers = {self._procs[i].popen.stdout.fileno(): i for i in busy}
    writers = {self._procs[i].popen.stdin.fileno(): i for i, c in busy.items() if c.out}
    soonest = min(c.deadline for c in busy.values())
    r, w, _ = select.select(list(readers), list(writers), [], max(0.0, soonest - time.monotonic()))
    for fd in w:
      if writers[fd] in busy:
        self._push(writers[fd], busy, results)
    for fd in r:
      i = readers[fd]
      if i not in busy:
        continue
      self._read_some(i, busy, results, reply)
    now = time.monotonic()
    for i, call in list(busy.items()):
      if now >= call.deadline:
        part = self._received(self._procs[i])
        came = (f"it had sent {part}" if part else
                "no byte of a reply came (a client that reads the case's arrays in another dtype "
                "or layout than sent waits for bytes that never come: check the hello's dtypes)")
        self._finish(i, call, busy, results, "timeout",
                     f"the call did not return within {self.timeout:g} s; {came}; the candidate's "
                     f"process ({self.command}) was killed; {_AGAIN}")

  def _read_some(self, i, busy, results, reply) -> None:
    call, proc = busy[i], self._procs[i]
    try:
      data = os.read(proc.popen.stdout.fileno(), _READ)
    except BlockingIOError:
      return
    if not data:
      failed = self._died(proc, f"it replied to case {call.ident}")
      self._finish(i, call, busy, results, failed.status, str(failed))
      return
    proc.buf += data
    try:
      got = self._parse(proc)
      if got is None:
        return
      header, arrays = got
      if header.get("id") != call.ident:
        raise wire.WireError(f"the reply has id {json.dumps(header.get('id'))[:40]}; it answers "
                             f"case {call.ident}, so its id must be {call.ident}")
      if call.out:
        raise wire.WireError("the reply came before the whole case was sent")
      if header["type"] == "error":
        said = str(header.get("message", ""))[:2000] or "(no message)"
        self._finish(i, call, busy, results, "refused",
                     f"the candidate replied with an error: {said}")
        return
      if header["type"] != "grads":
        raise wire.WireError(f"the reply's type is {json.dumps(header['type'])[:40]}; expected "
                             "\"grads\" or \"error\"")
      result = reply(header, arrays, call.item)
      if proc.buf:
        raise wire.WireError(f"{len(proc.buf)} bytes followed the reply: "
                             f"{wire.shown(bytes(proc.buf))}")
    except wire.WireError as exc:
      self._finish(i, call, busy, results, "protocol",
                   f"the candidate broke the bpref-wire protocol on case {call.ident}: {exc}. Its "
                   f"process was stopped; {_AGAIN} (stdout carries the protocol only: write logs "
                   "to stderr)")
      return
    self._finish(i, call, busy, results, "ok", result=result)


_AGAIN = "a fresh process takes any case that follows"
"""What happens after a process that failed a case, said only as what follows."""


_PREFERRED = {"dtypes": ("dtype", "float64"), "layouts": ("layout", "out_in"),
              "reductions": ("reduction", "mean")}


def _options_from(features: dict, options: dict) -> dict:
  """``options`` with what was not given taken from the candidate's declared features."""
  from bpref import activations as _activations
  from bpref import losses as _losses

  out = dict(options)
  unknown = [f"activations {', '.join(a for a in features['activations'] if a not in _activations.ACTIVATIONS)}"
             ] if any(a not in _activations.ACTIVATIONS for a in features["activations"]) else []
  unknown += [f"losses {', '.join(n for n in features['losses'] if n not in _losses.LOSSES)}"
              ] if any(n not in _losses.LOSSES for n in features["losses"]) else []
  if unknown:  # a misspelt name would otherwise leave part of what the program claims unchecked
    raise ExecError(f"the candidate's hello declares {' and '.join(unknown)}, which bpref does not "
                    f"know (activations: {', '.join(_activations.ACTIVATIONS)}; losses: "
                    f"{', '.join(_losses.LOSSES)}); fix the hello's names")
  if out.get("activations") is None:
    out["activations"] = tuple(features["activations"])
    if not out["activations"]:
      raise ExecError("the candidate's hello declares no activations; declare them, or pass --activations")
  if out.get("losses") is None:
    out["losses"] = tuple(features["losses"])
    if not out["losses"]:
      raise ExecError("the candidate's hello declares no losses; declare them, or pass --losses")
  for key, (option, preferred) in _PREFERRED.items():
    if out.get(option) is None:
      out[option] = preferred if preferred in features[key] else features[key][0]
  return out


def check(command: str, *, progress=None, cwd=None, env=None, **options):
  """Check the candidate process ``command`` with the oracle; a ``Report``.

  Options not given (activations, losses, dtype, layout, reduction) are taken from what the
  candidate declares in its hello; the rest are ``Spec`` fields as for ``bpref.oracle.check``
  (``isolate`` has no effect: the candidate always runs in its own process).

  Raises:
    ExecError (a ValueError) when the process cannot be started, does not answer the hello
    as the protocol asks, or declares less than the options ask for; ValueError / TypeError
    for bad options.
  """
  import bpref.oracle as _oracle

  start = time.perf_counter()
  options = {k: v for k, v in options.items() if k != "isolate"}
  workers = int(options.get("workers") or 1)
  timeout = options.get("timeout") or _spec.Spec.timeout
  with _isolation.recording() as transcript:
    pool = ExecPool(command, workers, timeout, cwd=cwd, env=env)
    try:
      features = pool.greet()
      try:
        wire.check_networks(features)
      except wire.WireError as exc:
        raise ExecError(str(exc)) from None
      spec = _spec.make_spec(**_options_from(features, options))
      try:
        wire.check_covers(features, spec)
      except wire.WireError as exc:
        raise ExecError(str(exc)) from None
      ev = _search.Evaluator(None, spec, pool, progress)
      found = _search.search(ev)
      report = _oracle.build_report(ev, spec, found, None, None, start)
    finally:
      pool.close()
  report.output = transcript.to_json()
  report.reproducer = replay_text(command, "REPRO.wire") if report.verdict == "fail" else ""
  return report


# ---------------------------------------------------------------- reproducers and replay

def replay_text(command: str, path: str) -> str:
  """The one-line commands that replay the reproducer file ``path`` on ``command``."""
  cmd, where = shlex.quote(command), shlex.quote(path)
  return (f"bpref check --exec {cmd} --replay {where}    # judges the candidate on the minimal "
          f"case again\n{command} < {where}    # the same bytes bpref sent (hello, case, bye): run it "
          "alone, or under a debugger\n")


def case_from_report(report):
  """The minimal failing case of ``report`` as a ``spec.Case`` (its arrays in their dtype)."""
  c = report.case
  arch = _spec.Arch.from_json(c["arch"])
  dtype = np.dtype(c["dtype"])
  arrays = c["arrays"]
  L = arch.depth
  weights = tuple(np.asarray(arrays[f"W{l}"], np.float64).astype(dtype) for l in range(1, L + 1))
  biases = (tuple(np.asarray(arrays[f"b{l}"], np.float64).astype(dtype) for l in range(1, L + 1))
            if "b1" in arrays else None)
  return _spec.Case(arch, weights, biases, np.asarray(arrays["x"], np.float64).astype(dtype),
                    np.asarray(arrays["t"], np.float64).astype(dtype), c["reduction"], c["dtype"])


def reproducer_bytes(report) -> bytes:
  """The minimal failing case of ``report`` as bpref sends it: hello, the case, bye."""
  case = case_from_report(report)
  return wire.hello() + wire.case_message(case, report.spec["layout"], 1) + wire.BYE


def write_reproducer(report, path: str, command: str = "") -> str:
  """Write ``reproducer_bytes(report)`` to ``path``; the one-line replay commands."""
  with open(path, "wb") as fh:
    fh.write(reproducer_bytes(report))
  return replay_text(command or "./candidate", path)


def case_from_wire(header: dict, arrays: dict):
  """A ``spec.Case`` from a case message (``wire.case_message``); WireError when inconsistent."""
  try:
    sizes = tuple(int(n) for n in header["sizes"])
    acts = tuple(str(a) for a in header["activations"])
    loss, batch, dtype = str(header["loss"]), int(header["batch"]), str(header["dtype"])
    layout, reduction, bias = str(header["layout"]), str(header["reduction"]), bool(header["bias"])
  except (KeyError, TypeError, ValueError) as exc:
    raise wire.WireError(f"the case header lacks or mistypes {exc}; expected the keys of a case "
                         "message (docs/protocol.md)") from None
  L = len(acts)
  if len(sizes) != L + 1 or dtype not in wire.FLOATS or layout not in _spec.LAYOUTS:
    raise wire.WireError(f"the case header is inconsistent: sizes {list(sizes)}, {L} activations, "
                         f"dtype {dtype!r}, layout {layout!r}")
  want = {"x": (batch, sizes[0]), "t": (batch, sizes[-1])}
  for l in range(1, L + 1):
    want[f"W{l}"] = (sizes[l - 1], sizes[l]) if layout == "in_out" else (sizes[l], sizes[l - 1])
    if bias:
      want[f"b{l}"] = (sizes[l],)
  for name, shape in want.items():
    if name not in arrays or arrays[name].shape != shape or arrays[name].dtype != np.dtype(dtype):
      got = "missing" if name not in arrays else f"{arrays[name].dtype} {arrays[name].shape}"
      raise wire.WireError(f"the case's array {name} is {got}; its header needs {dtype} {shape}")
  h = hashlib.sha256()
  for name in sorted(want):
    h.update(name.encode() + arrays[name].tobytes())
  arch = _spec.Arch(sizes, acts, loss, batch, int.from_bytes(h.digest()[:7], "big"))
  weights = tuple(arrays[f"W{l}"].T if layout == "in_out" else arrays[f"W{l}"]
                  for l in range(1, L + 1))
  biases = tuple(arrays[f"b{l}"] for l in range(1, L + 1)) if bias else None
  return _spec.Case(arch, weights, biases, arrays["x"], arrays["t"], reduction, dtype), layout


def replay(command: str, path: str, *, timeout: float = 60.0, cwd=None, env=None) -> tuple:
  """Judge ``command`` again on the case stored in the reproducer file ``path``.

  Returns (passed, text): text gives the verdict and the error per array against bpref.
  Raises ExecError / WireError (ValueErrors) for a file that is not a reproducer, or a
  candidate that cannot be run.
  """
  from bpref.oracle import truth as _truth

  try:
    with open(path, "rb") as fh:
      data = fh.read()
  except OSError as exc:
    raise ExecError(f"--replay {path}: cannot be read ({exc.strerror or exc})") from None
  try:
    cases = [(h, a) for h, a in wire.read_messages(data) if h["type"] == "case"]
  except wire.WireError as exc:
    raise wire.WireError(f"--replay {path}: not a bpref-wire file: {exc}") from None
  if len(cases) != 1:
    raise wire.WireError(f"--replay {path}: holds {len(cases)} case messages; a reproducer holds "
                         "exactly one (bpref check --exec ... --reproducer FILE writes it)")
  case, layout = case_from_wire(*cases[0])
  spec = _spec.make_spec(activations=tuple(dict.fromkeys(case.arch.activations)),
                         losses=(case.arch.loss,), dtype=case.dtype, layout=layout,
                         reduction=case.reduction, bias=case.biases is not None, timeout=timeout)
  truth = _truth.compute(case)
  with _isolation.recording() as transcript:
    pool = ExecPool(command, 1, timeout, cwd=cwd, env=env)
    try:
      features = pool.greet()
      try:
        wire.check_networks(features)
        wire.check_covers(features, spec)
      except wire.WireError as exc:
        raise ExecError(str(exc)) from None
      outcome = pool.map([_isolation.NetworkCall(case, layout)])[0]
    finally:
      pool.close()
  result = _judge.judge(case, truth, outcome, spec)
  lines = [f"{'PASS' if result.passed else 'FAIL'}: {result.message.splitlines()[0]}",
           f"  case: {case.arch.describe().rsplit(' seed=', 1)[0]}, {case.dtype}, layout {layout}, "
           f"reduction {case.reduction}"]
  if result.errors:
    lines.append(f"  normwise error per array (tolerance {result.tolerance:.1e}):")
    lines.append("    " + "  ".join(f"{k}: {v:.2e}{' *' if not v <= result.tolerance else ''}"
                                    for k, v in result.errors.items()))
  if transcript.stderr:
    lines.append("  the candidate's stderr:")
    lines += [f"    | {line[:160]}" for line in transcript.stderr.rstrip("\n").splitlines()[:10]]
  return result.passed, "\n".join(lines)
