"""One operation's backward in any language: op messages over bpref-wire version 2.

``check_op(kind, exec_command="./layers")`` (``bpref check --op KIND --exec ./layers``) runs
the op oracle's search, shrinking and diagnosis on a program instead of a Python function.
Each call of the candidate becomes one op message on the program's stdin,

  {"type":"op","id":7,"kind":"layernorm","name":null,"dtype":"float32","layout":"btc",
   "takes":"x","options":{"eps":1e-05},"args":["x","w","b","dout"],"none":[],"arrays":[...]}

followed by the arrays x, w, b, dout: each array argument under its name, in the candidate's
argument order (``record.arg_names``), as the Python candidate would be handed it (layout,
dtype; integer arguments such as token ids as int64); a number among the arguments
(attention's heads) goes into "options" under its name, beside the kind's own options
(``wire_options``); an argument that is None is named in "none". The program answers with
``{"type":"grads","id":7,"arrays":[...]}`` holding the op's outputs by name
(``record.output_names``: dx, dw, db, ...), as the Python candidate would return them.

``OpWirePool`` is the pool the op engine calls through, with the interface of
``isolation.Isolated``: ``start``, ``info``, ``map([(which, args)])``, ``fresh``, ``close``. It
runs on ``bpref.oracle.exec.ExecPool`` (``exchange``), so a crash, a hang or a broken reply is
an outcome of its own as for a network (crash, timeout, protocol); since a new process costs
milliseconds, a crash is shrunk too (``info["cheap_restarts"]``). There is no forward over the
wire (``info["forward"]`` is False).
"""

from __future__ import annotations

import re

import numpy as np

from bpref.oracle import exec as _exec
from bpref.oracle import isolation as _isolation
from bpref.oracle import wire
from bpref.oracle.ops import _search, kinds
from bpref.oracle.ops.record import OpCase, OpSpec

SEARCH_FIELDS = ("examples", "seed", "max_batch", "max_width", "strict_conventions", "timeout",
                 "shrink_budget", "signature", "heads")
"""``OpSpec`` fields that say how bpref searches and judges, not what the op computes: never sent
(attention's heads travel as the argument they are, per case)."""

HEAD_FIELDS = ("kind", "name", "dtype", "layout", "takes")
"""``OpSpec`` fields sent as keys of their own in every op message."""

_WIRE_NAME = re.compile(r"[A-Za-z0-9_]+\Z")


def wire_options(spec: OpSpec) -> dict:
  """The kind's own options that change what the op computes (its record's ``options`` less
  ``SEARCH_FIELDS`` and ``HEAD_FIELDS``), by their ``OpSpec`` names: eps, bias, reduction, targets."""
  fields = kinds.of(spec).options
  return {f: getattr(spec, f) for f in OpSpec._fields
          if f in fields and f not in SEARCH_FIELDS + HEAD_FIELDS}


def head(spec: OpSpec) -> dict:
  """The keys of every op message of this check, before "args" (``wire.op_message``)."""
  return {"kind": spec.kind, "name": spec.name, "dtype": spec.dtype, "layout": spec.layout,
          "takes": spec.takes, "options": wire_options(spec)}


def message(spec: OpSpec, args, ident: int) -> bytes:
  """The op message for one call of the backward on ``args`` (``record.args``)."""
  names = kinds.of(spec).arg_names(spec)
  return wire.op_message(ident, head(spec), list(zip(names, args)))


def untravelled(spec: OpSpec) -> list:
  """Why this check's calls cannot be op messages, one reason each; [] when they can.

  Read off one probe case: each argument must be an array of float64, float32 or int64, a
  number or None, and every argument and output name a wire name (letters, digits, _).
  """
  record = kinds.of(spec)
  case = record.case(spec, _search.probes(spec)[0])
  names = list(record.arg_names(spec)) + list(record.output_names(spec))
  bad = [n for n in names if not _WIRE_NAME.match(n)]
  out = []
  if bad:
    shown = ", ".join(bad[:4]) + (f", ... ({len(bad)} in all)" if len(bad) > 4 else "")
    out.append(f"its arguments and outputs are named {shown}, not wire names (letters, digits "
               "and _ only)")
  for name, value in zip(record.arg_names(spec), record.args(spec, case)):
    if isinstance(value, np.ndarray):
      if value.dtype.name not in wire.DTYPES:
        out.append(f"argument {name} is an array of {value.dtype.name}, which bpref-wire does not "
                   f"carry ({', '.join(wire.DTYPES)})")
    elif value is not None and (isinstance(value, bool) or
                                not isinstance(value, (int, float, np.integer, np.floating))):
      out.append(f"argument {name} is a {type(value).__name__}; bpref-wire carries arrays, numbers "
                 "and None")
  return out


class OpWirePool:
  """A program speaking bpref-wire version 2, called as the op engine calls a pool.

  Args:
    command: the program's command line (``ExecPool``), e.g. "./layers".
    kind, name: the op checked.
    options: the other ``OpSpec`` fields; a dtype not given is the one the program's hello
      declares (float64 when it declares it).
    cwd, env: for the process.
    workers: processes of the program running calls side by side.

  ``start`` starts the program and reads its hello; the check's ``OpSpec`` is then ``spec``.
  Bad options, and an op whose arguments cannot travel (``untravelled``), raise ValueError
  (``ExecError``) here, before any process starts.
  """

  def __init__(self, command: str, kind: str, name=None, options=None, *, cwd=None, env=None,
               workers: int = 1):
    self._asked = (kind, name, dict(options or {}))
    given = self._asked[2]
    checked = kinds.make_spec(kind, name, **dict(given, dtype=given.get("dtype") or "float64"))
    why = untravelled(checked)  # bad options and ops that cannot travel: refused before any process
    if why:
      raise _exec.ExecError(f"the op check {kinds.of(checked).describe(checked)} cannot go over "
                            f"bpref-wire: {'; '.join(why)}; choose other options (--takes, "
                            "--signature) or check a Python function (--function)")
    self.command = command
    self.procs = _exec.ExecPool(command, workers, checked.timeout, cwd=cwd, env=env)
    self.spec = None
    self.info = None
    self.features = None

  def start(self) -> dict:
    """The program started and its hello read: ``info``, {"forward": False, "cheap_restarts":
    True, "features": what the hello declares}.

    Raises ``ExecError`` (a ValueError, a usage error) when it does not start, its hello is
    malformed, or it does not declare the op or the dtype.
    """
    kind, name, given = self._asked
    features = self.procs.greet()
    dtype = given.get("dtype") or ("float64" if "float64" in features["dtypes"]
                                   else features["dtypes"][0])
    spec = kinds.make_spec(kind, name, **dict(given, dtype=dtype))
    missing = wire.op_missing(features, spec.kind, spec.name, spec.dtype)
    if missing:
      narrow = (f"; or check a dtype it declares (--dtype {features['dtypes'][0]})"
                if dtype not in features["dtypes"] else "")
      raise _exec.ExecError(
          f"the op check {kinds.of(spec).describe(spec)} needs what the program's hello does not "
          f"declare: {'; '.join(missing)}. Implement it and declare it in the hello, "
          f"{{\"type\":\"hello\",\"version\":2,\"ops\":[...],\"dtypes\":[...]}} "
          f"(docs/protocol.md){narrow}")
    self.spec, self.features = spec, features
    self.info = {"forward": False, "cheap_restarts": True, "features": features}
    return self.info

  def map(self, calls) -> list:
    """One ``isolation.Outcome`` per (which, args), in order. Only backward calls with the
    backward's arguments are sent; any other call (the forward, or another number of
    arguments, which the diagnosis tries in Python) fails without reaching the program."""
    record, spec = kinds.of(self.spec), self.spec
    arity = len(record.arg_names(spec))
    out = [None] * len(calls)
    sent = []
    for i, (which, args) in enumerate(calls):
      if which != "backward" or len(args) != arity:
        out[i] = _isolation.Outcome("exception", error=f"not sent: bpref-wire carries the "
                                    f"backward with its {arity} arguments only")
      else:
        sent.append(i)
    names, loss = record.output_names(spec), record.forward_scalar(spec)
    outcomes = self.procs.exchange(
        [calls[i][1] for i in sent], lambda args, ident: message(spec, args, ident),
        lambda header, arrays, args: wire.op_result(header, arrays, names, loss))
    for i, outcome in zip(sent, outcomes):
      out[i] = outcome
    return out

  def fresh(self) -> None:
    """The program's process ended; the next call starts a fresh one that has seen no call."""
    self.procs.fresh()

  def close(self) -> None:
    """bpref's bye sent, then the process ended (``ExecPool.close``)."""
    self.procs.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


# ---------------------------------------------------------------- reproducers

def reproducer_bytes(spec: OpSpec, case_json: dict) -> bytes:
  """The minimal case of a failed op check (its report's ``case``) as bpref sent it: bpref's
  hello, the op message (id 1) and bye; ``./prog < FILE`` replays it without bpref."""
  record = kinds.of(spec)
  arrays = {k: record.internal(spec, k, np.asarray(v, np.float64))
            for k, v in case_json["arrays"].items()}
  args = record.args(spec, OpCase(None, arrays))
  return wire.hello() + message(spec, args, 1) + wire.BYE


def replay(command: str, path: str, *, timeout: float = 60.0, cwd=None, env=None) -> tuple:
  """Judge ``command`` again on the op case stored in the reproducer file ``path``.

  Returns (passed, text): the verdict on that case and the error per output against bpref.
  Raises ExecError / WireError (ValueErrors) for a file that is not an op reproducer, or a
  program that cannot be run or does not declare the op.
  """
  from bpref.oracle.ops import case_of_args

  try:
    with open(path, "rb") as fh:
      data = fh.read()
  except OSError as exc:
    raise _exec.ExecError(f"--replay {path}: cannot be read ({exc.strerror or exc})") from None
  try:
    ops = [(h, a) for h, a in wire.read_messages(data) if h.get("type") == "op"]
  except wire.WireError as exc:
    raise wire.WireError(f"--replay {path}: not a bpref-wire file: {exc}") from None
  if len(ops) != 1:
    raise wire.WireError(f"--replay {path}: holds {len(ops)} op messages; an op reproducer "
                         "(--reproducer FILE of a failed --op check) holds one")
  head, arrays = ops[0]
  options = {k: v for k, v in head.get("options", {}).items() if k not in head["args"]}
  given = dict(options, layout=head["layout"], takes=head["takes"], dtype=head["dtype"],
               timeout=timeout)
  args = [arrays[n] if n in arrays else None if n in head["none"] else head["options"][n]
          for n in head["args"]]
  with OpWirePool(command, head["kind"], head["name"], given, cwd=cwd, env=env) as pool:
    pool.start()
    spec, case = case_of_args(pool.spec, args)
    run = _search.Evaluator(None, spec, pool).run(case, forward=False)
  record = kinds.of(spec)
  if run.verdict is None:
    return False, (f"no verdict: the reproducer's case of {record.describe(spec)} checks nothing "
                   "(bpref's gradient is zero or not finite there)")
  verdict = run.verdict
  lines = [f"{'PASS' if verdict.passed else 'FAIL'} on the reproducer's case of "
           f"{record.describe(spec)}: {verdict.message}"]
  lines += [f"  {k}: error {e:.3e} (tolerance {verdict.tol:.1e})"
            for k, e in (verdict.errors or {}).items()]
  return verdict.passed, "\n".join(lines) + "\n"


def replay_text(command: str, path: str, kind: str, name=None) -> str:
  """The one-line commands that replay the reproducer file ``path`` on ``command``."""
  import shlex

  op = f"--op {kind}" + (f" --op-name {name}" if name else "")
  return (f"bpref check {op} --exec {shlex.quote(command)} --replay {shlex.quote(path)}    # judges "
          f"the program on the minimal case again\n{command} < {path}    # the same bytes bpref "
          "sent (hello, the op, bye): run it alone, or under a debugger\n")
