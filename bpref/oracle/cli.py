"""``bpref check``: check another backprop implementation from the command line.

  bpref check module:function [options]
  bpref check path/to/file.py:function [options]
  bpref check --torch module:factory [options]     (also --flax, --equinox)
  bpref check --exec "./mybp" [options]            (any language: docs/protocol.md)
  bpref check --exec "./mybp" --replay REPRO.wire  (the minimal case of a failed check, again)
  bpref check --op activation --op-name relu module:relu_backward   (one operation: docs/oracle.md)
  bpref check --op layernorm --exec "./layers"     (one operation in any language, bpref-wire 2)

The candidate runs in a subprocess and the verdict is printed by this process,
which the candidate never ran in: whatever it does (print, raise SystemExit, call
os._exit, crash, hang, patch bpref when imported) ends in a report and a nonzero
exit. ``--in-process`` runs it here instead, faster but trusting it; an early exit
through ``os._exit`` or ``SystemExit`` still cannot end the check with status 0.

Exit codes: 0 the candidate passed, 1 a bug was found (a crash or an early exit
included), 2 usage error (the candidate could not be loaded, for one).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys

from bpref import bridges as _bridges
from bpref import compilation as _compilation
from bpref import validation as _validation
from bpref.oracle import spec as _spec
from bpref.oracle.ops import cli as _ops_cli

EXIT_PASS, EXIT_BUG, EXIT_USAGE = 0, 1, 2


RANGES = {  # the documented range of each numeric option, checked before anything runs
    "max_depth": (1, _spec.MAX_DEPTH), "max_width": (1, 1024), "max_batch": (1, 4096),
    "examples": (0, 1_000_000), "seed": (0, 2**32 - 1), "shrink_budget": (0, 100_000),
    "timeout": (0.0, 86_400.0), "workers": (1, 256),
}
"""Inclusive ranges, except that a timeout must exceed 0 s. Workers are also capped at the cores
this process may use, unless --force-workers."""


def _ranged(name: str, kind):
  return _validation.ranged(*RANGES[name], kind, unit="seconds" if name == "timeout" else "")


def _cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    return os.cpu_count() or 1


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    self.print_usage(sys.stderr)
    print(f"{self.prog}: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def _parser() -> argparse.ArgumentParser:
  p = _Parser(
      prog="bpref check",
      description="Search for a network on which a candidate's gradients differ from bpref's, "
                  "shrink it to a minimal one and diagnose the bug. The candidate is "
                  "grads(weights, biases, activations, loss, x, t) -> (dW, db) on NumPy arrays.",
      epilog="exit codes: 0 pass, 1 bug found, 2 usage error")
  p.add_argument("candidate", nargs="?", help="module:function or path/to/file.py:function")
  for fw in _bridges.BRIDGES:
    p.add_argument(f"--{fw}", metavar="MODULE:FACTORY",
                   help=f"check {fw}'s gradients for the model FACTORY() returns (needs the {fw} bridge)")
  p.add_argument("--exec", metavar="COMMAND", dest="exec_command",
                 help="check a program in any language that speaks bpref-wire on stdin/stdout "
                      "(docs/protocol.md), e.g. --exec ./mybp or --exec 'node mybp.js'; options "
                      "not given (activations, losses, dtype, layout, reduction) are what it "
                      "declares in its hello; with --op KIND, one operation of a program speaking "
                      "version 2")
  p.add_argument("--demo", action="store_true",
                 help="check a textbook NumPy backprop bundled with bpref, then the same code with "
                      "a planted bug, and print both reports (bpref/oracle/demo.py)")
  p.add_argument("--replay", metavar="WIRE",
                 help="with --exec: judge the program on the one case of a reproducer file "
                      "(written by --reproducer after a failed --exec check) and print its errors")
  d = p.add_argument_group("domain (what the candidate claims to handle)")
  d.add_argument("--activations",
                 help="comma-separated activation names (default: identity,relu,tanh,sigmoid; "
                      "with --exec, those the program declares)")
  d.add_argument("--losses",
                 help="comma-separated loss names (default: squared_error; with --exec, those the "
                      "program declares)")
  d.add_argument("--output-activations", action="append", default=[], metavar="LOSS=ACT,ACT",
                 help="output activations allowed after LOSS (repeatable)")
  d.add_argument("--reduction", choices=("mean", "sum"), help="default mean")
  d.add_argument("--max-depth", type=_ranged("max_depth", int), default=None,
                 help="largest number of layers, 1 to 64 (default 3)")
  d.add_argument("--max-width", type=_ranged("max_width", int), default=None,
                 help="largest layer width, 1 to 1024 (default 5; --op: 6)")
  d.add_argument("--max-batch", type=_ranged("max_batch", int), default=None,
                 help="largest batch, 1 to 4096 (default 4; --op: 5)")
  d.add_argument("--dtype", choices=("float64", "float32"), help="default float64")
  d.add_argument("--layout", metavar="LAYOUT",
                 help="out_in (the default): W_l is (n_l, n_(l-1)); in_out: (n_(l-1), n_l); "
                      "--op layernorm: btc or nc, --op attention: llmc or torch")
  d.add_argument("--no-bias", action="store_true", help="layers have no biases (biases=None)")
  s = p.add_argument_group("search")
  s.add_argument("--examples", type=_ranged("examples", int), default=40,
                 help="random cases after the probes, 0 to 1000000 (default 40)")
  s.add_argument("--seed", type=_ranged("seed", int), default=0, help="0 to 2**32 - 1 (default 0)")
  _compilation.add_cache_arguments(s)
  s.add_argument("--strict-kinks", action="store_true", help="a different f'(0) at a kink is a bug")
  s.add_argument("--timeout", type=_ranged("timeout", float), default=60.0,
                 help="seconds per candidate call, above 0 and at most 86400 (default 60)")
  where = s.add_mutually_exclusive_group()
  where.add_argument("--isolate", action="store_true",
                     help="run the candidate in a subprocess (the default): a crash, an early exit "
                          "or a hang is reported, and the verdict comes from this process, which "
                          "the candidate never runs in")
  where.add_argument("--in-process", action="store_true",
                     help="run the candidate in this process: quicker to start, but it trusts the "
                          "candidate (code that patches bpref when imported changes the verdict; "
                          "a hang ends the search)")
  s.add_argument("--workers", type=_ranged("workers", int), default=1,
                 help="subprocesses running candidate calls, at most the cores available "
                      "(default 1)")
  s.add_argument("--force-workers", action="store_true",
                 help="allow more --workers than cores (up to 256)")
  s.add_argument("--dask", metavar="ADDRESS",
                 help="run the candidate's calls on the Dask cluster whose scheduler is at ADDRESS "
                      "(tcp://host:8786; pip install 'bpref[dask]'): as many at once as it has "
                      "worker threads, with the verdict and minimal case of --workers 1")
  s.add_argument("--shrink-budget", type=_ranged("shrink_budget", int), default=None,
                 help="most candidate calls spent shrinking a failure (default 120; --op: 150)")
  o = p.add_argument_group("output")
  o.add_argument("--json", action="store_true", help="print the report as JSON")
  o.add_argument("--plot", metavar="PNG", help="write the per-layer errors of a failing candidate")
  o.add_argument("--reproducer", metavar="FILE",
                 help="write the reproducer of a failure here: a Python script, or with --exec the "
                      "minimal case in the bpref-wire format (replay it with --replay FILE)")
  o.add_argument("--no-progress", action="store_true")
  _ops_cli.add_op_arguments(p)
  return p


def _output_activations(items, parser) -> dict:
  out = {}
  for item in items:
    loss, sep, acts = item.partition("=")
    if not sep or not loss or not acts:
      parser.error(f"--output-activations takes LOSS=ACT,ACT; got {item!r}")
    out[loss.strip()] = tuple(a.strip() for a in acts.split(",") if a.strip())
  return out


def _progress(phase, calls):
  sys.stderr.write(f"\r{phase:9} {'#' * min(40, calls // 2)} {calls} calls ")
  sys.stderr.flush()


def plot_layers(report, path) -> None:
  """A PNG of the per-layer (and per-array) errors of the minimal failing case."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = list(report.errors)
  values = [max(report.errors[n], 1e-300) for n in names]
  fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(names) + 2), 3.5))
  colors = ["tab:red" if not v <= report.tolerance else "tab:green" for v in values]
  ax.bar(names, values, color=colors)
  ax.axhline(report.tolerance, color="black", linestyle="--", label=f"tolerance {report.tolerance:.1e}")
  ax.set_yscale("log")
  ax.set_ylabel("normwise error vs bpref")
  title = report.diagnosis[0].summary if report.diagnosis else report.kind
  ax.set_title(title if len(title) < 70 else title[:67] + "...", fontsize=9)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


class _ExitGuard:
  """--in-process: an exit by the candidate before the verdict is printed never gives status 0.

  While active, ``os._exit(n)`` is replaced: before the verdict is printed it says so on
  stderr and exits with n, or EXIT_BUG for n = 0; after, with n, or the verdict's status for
  n = 0. (A ``SystemExit`` the candidate raises is caught by the oracle or by ``main``.) Code
  that calls the C library's exit directly (``posix._exit``, ctypes) is not covered, nor an
  exit after ``main`` returned: the isolated default covers those.
  """

  def __init__(self):
    self.status = None  # the verdict's exit status, once printed
    self._real = None
    self._stderr = -1

  def __enter__(self):
    self._real = os._exit
    try:
      self._stderr = os.dup(2)  # fd 2 itself is redirected while the candidate runs
    except OSError:
      self._stderr = -1
    os._exit = self._exit
    return self

  def __exit__(self, *exc):
    os._exit = self._real
    if self._stderr >= 0:
      os.close(self._stderr)
      self._stderr = -1

  def _exit(self, n=0):
    n = int(n)
    if self.status is None:
      if self._stderr >= 0:
        os.write(self._stderr, (f"\nbpref check: the candidate called os._exit({n}) before the "
                                "verdict was printed: that is not a pass (run without "
                                "--in-process for a report)\n").encode())
      self._real(n or EXIT_BUG)
    self._real(n or self.status)


def _placement_clash(args, program: bool) -> str:
  """Why --dask, --workers and --in-process (and --exec, ``program``) cannot go together, or ""."""
  if args.dask and (args.in_process or args.workers > 1 or program):
    clash = "--in-process" if args.in_process else "--exec" if program else "--workers"
    return f"--dask runs the candidate's calls on the cluster's workers; drop {clash}"
  if args.in_process and args.workers > 1:
    return (f"--workers {args.workers} runs the candidate in subprocesses; drop --in-process, or "
            "use --workers 1")
  return ""


def main(argv=None) -> int:
  parser = _parser()
  try:
    args = parser.parse_args(argv)
  except SystemExit as exc:
    return int(exc.code or 0)
  if args.workers > _cores() and not args.force_workers:
    return _usage(parser, f"--workers {args.workers} is more than the {_cores()} cores available; "
                  "use fewer, or add --force-workers")
  if args.demo:
    return _main_demo(args, parser)
  if args.op:
    return _main_op(args, parser)
  given = _given_op_options(args)
  if given:
    return _usage(parser, f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to one "
                  "operation's check only: add --op KIND, or drop "
                  f"{'it' if len(given) == 1 else 'them'}")
  if args.layout not in (None, "out_in", "in_out"):
    return _usage(parser, f"--layout {args.layout}: a network's layout is out_in or in_out")
  args.max_depth = 3 if args.max_depth is None else args.max_depth
  args.max_width = 5 if args.max_width is None else args.max_width
  args.max_batch = 4 if args.max_batch is None else args.max_batch
  args.shrink_budget = 120 if args.shrink_budget is None else args.shrink_budget
  chosen = [(fw, getattr(args, fw)) for fw in _bridges.BRIDGES if getattr(args, fw)]
  if args.candidate:
    chosen.insert(0, ("function", args.candidate))
  if args.exec_command is not None:
    chosen.append(("exec", args.exec_command))
  if len(chosen) != 1:
    parser.print_usage(sys.stderr)
    print("bpref check: error: name exactly one candidate: module:function, path.py:function, "
          f"one of {', '.join('--' + fw for fw in _bridges.BRIDGES)} MODULE:FACTORY, or "
          "--exec COMMAND", file=sys.stderr)
    return EXIT_USAGE
  kind, ref = chosen[0]
  if kind == "exec" and args.in_process:
    return _usage(parser, "--in-process does not apply to --exec: the program always runs in its "
                  "own process; drop it")
  if args.replay and kind != "exec":
    parser.print_usage(sys.stderr)
    print("bpref check: error: --replay FILE replays a bpref-wire reproducer on a program: give "
          "it with --exec COMMAND", file=sys.stderr)
    return EXIT_USAGE
  clash = _placement_clash(args, kind == "exec")
  if clash:
    return _usage(parser, clash)
  import jax

  jax.config.update("jax_enable_x64", True)
  from bpref import compilation, oracle

  try:
    if not args.no_cache:
      compilation.use_cache(args.cache_dir, default=True)
  except ValueError as exc:
    print(f"bpref check: error: {exc}", file=sys.stderr)
    return EXIT_USAGE

  options = dict(
      activations=args.activations, losses=args.losses, reduction=args.reduction,
      output_activations=_output_activations(args.output_activations, parser),
      max_depth=args.max_depth, max_width=args.max_width, max_batch=args.max_batch, dtype=args.dtype,
      layout=args.layout, bias=not args.no_bias, examples=args.examples, seed=args.seed,
      strict_kinks=args.strict_kinks, timeout=args.timeout, isolate=not args.in_process,
      workers=args.workers, shrink_budget=args.shrink_budget)
  show = not (args.no_progress or args.json) and sys.stderr.isatty()
  if kind == "exec":
    return _main_exec(args, ref, options, show)
  guard = _ExitGuard() if args.in_process else contextlib.nullcontext()
  with guard:
    try:
      report = _counted(lambda: oracle.check(target=(kind, ref), progress=_progress if show else None,
                                             cluster=args.dask, **options), show)
      if report is None:
        return EXIT_USAGE
    except SystemExit as exc:  # raised in this thread by the candidate (from a signal handler, say)
      print(f"\nbpref check: the candidate raised SystemExit({exc.code!r}) in bpref's own thread "
            "before the verdict: that is not a pass", file=sys.stderr)
      return EXIT_BUG
    if show:
      sys.stderr.write("\n")
    code = _status(report)
    if report.verdict == "error":  # the candidate could not be loaded: a usage error, as in process
      print(f"bpref check: error: {report.message}", file=sys.stderr)
    if args.json or report.verdict != "error":
      print(report.json() if args.json else report.text())
    elif report.output:
      print(report.output_text(), file=sys.stderr)
    sys.stdout.flush()
    if args.in_process:
      guard.status = code
  if report.verdict == "fail":
    if args.reproducer:
      with open(args.reproducer, "w") as fh:
        fh.write(report.reproducer)
    if args.plot:
      try:
        plot_layers(report, args.plot)
      except ImportError:
        print("bpref check: --plot needs matplotlib (pip install 'bpref[plot]'); no picture written",
              file=sys.stderr)
  return code


def _usage(parser, message) -> int:
  parser.print_usage(sys.stderr)
  print(f"bpref check: error: {message}", file=sys.stderr)
  return EXIT_USAGE


def _given_op_options(args) -> list:
  """The op-only options given on a command line without --op."""
  given = [flag for flag, value in (("--op-name", args.op_name), ("--function", args.function),
                                    ("--takes", args.takes), ("--targets", args.targets),
                                    ("--signature", args.signature), ("--eps", args.eps),
                                    ("--heads", args.heads))
           if value is not None]
  return given + (["--strict-conventions"] if args.strict_conventions else [])


def _counted(check, show):
  """check() with its compilations in the report, or None after printing a usage error."""
  from bpref import compilation

  try:
    with compilation.count() as seen:
      report = check()
  except (ValueError, TypeError) as exc:
    if show:
      sys.stderr.write("\n")
    print(f"bpref check: error: {exc}", file=sys.stderr)
    return None
  report.compilation = seen.to_json()
  return report


NETWORK_ONLY = (("--activations", "activations", None), ("--losses", "losses", None),
                ("--output-activations", "output_activations", []),
                ("--max-depth", "max_depth", None), ("--strict-kinks", "strict_kinks", False),
                ("--plot", "plot", None))
"""Options of the whole-network check, with their unset values: a usage error under --op."""


def _main_op(args, parser) -> int:
  """``bpref check --op KIND``: one operation's backward function (``bpref.oracle.ops``), or a
  program's (``--exec``, bpref-wire version 2)."""
  others = [f"--{fw}" for fw in _bridges.BRIDGES if getattr(args, fw)]
  if args.candidate and args.function:
    others.append(args.candidate)
  if others:
    return _usage(parser, f"--op checks the one function --function names; drop {', '.join(others)}")
  if args.exec_command is not None and (args.function or args.candidate):
    return _usage(parser, "--op checks one candidate: a Python function (--function) or a program "
                  "(--exec); drop --exec or --function")
  if args.exec_command is not None and args.in_process:
    return _usage(parser, "--in-process does not apply to --exec: the program always runs in its "
                  "own process; drop it")
  if args.replay and args.exec_command is None:
    return _usage(parser, "--replay FILE replays a bpref-wire reproducer on a program: give it "
                  "with --exec COMMAND")
  clash = _placement_clash(args, args.exec_command is not None)
  if clash:
    return _usage(parser, clash)
  given = [flag for flag, dest, unset in NETWORK_ONLY if getattr(args, dest) != unset]
  if given:
    hint = " (--strict-conventions is --op's)" if args.strict_kinks else ""
    return _usage(parser, f"{', '.join(given)} do{'es' if len(given) == 1 else ''} not apply to "
                  f"one operation's check (--op){hint}: drop {'it' if len(given) == 1 else 'them'}")
  args.takes = args.takes or ""
  args.targets = args.targets or "probabilities"
  args.signature = args.signature or "bpref"
  args.function = args.function or args.candidate
  args.reduction = args.reduction or "mean"
  args.dtype = args.dtype or (None if args.exec_command is not None else "float64")  # --exec: its hello's
  args.layout = args.layout or ""
  import jax

  jax.config.update("jax_enable_x64", True)
  from bpref import compilation

  try:
    if not args.no_cache:
      compilation.use_cache(args.cache_dir, default=True)
  except ValueError as exc:
    return _usage(parser, str(exc))
  guard = _ExitGuard() if args.in_process else contextlib.nullcontext()
  with guard:
    code = _ops_cli.run_op_command(args)
    sys.stdout.flush()
    if args.in_process:
      guard.status = code
  return code


def _main_demo(args, parser) -> int:
  """``bpref check --demo``: the oracle on bundled code, correct and with a planted bug."""
  if args.candidate or args.exec_command or args.op or any(getattr(args, fw) for fw in _bridges.BRIDGES):
    return _usage(parser, "--demo checks bpref's bundled example: name no candidate with it")
  import jax

  jax.config.update("jax_enable_x64", True)
  from bpref.oracle import demo

  good, bad = demo.run(examples=args.examples, seed=args.seed)
  if args.json:
    print(f'{{"correct": {good.json()}, "with_bug": {bad.json()}}}')
  else:
    print("bpref check --demo: a textbook NumPy backprop (bpref/oracle/demo.py: grads), then the\n"
          "same code with the hidden layers' f' left out of the delta recursion (grads_with_bug).\n"
          "Your own: bpref check yourfile.py:your_grads --activations relu,tanh\n")
    print("1. the textbook code\n" + good.text() + "\n\n2. the same code with the bug\n" + bad.text())
  return EXIT_PASS if good.verdict == "pass" and bad.verdict == "fail" else EXIT_BUG


def _main_exec(args, command, options, show) -> int:
  """``bpref check --exec COMMAND``: the oracle on a program speaking bpref-wire."""
  from bpref.oracle import exec as _exec

  if args.replay:
    try:
      passed, text = _exec.replay(command, args.replay, timeout=args.timeout)
    except ValueError as exc:
      print(f"bpref check: error: {exc}", file=sys.stderr)
      return EXIT_USAGE
    print(text)
    return EXIT_PASS if passed else EXIT_BUG
  options = {k: v for k, v in options.items() if k != "isolate"}
  report = _counted(lambda: _exec.check(command, progress=_progress if show else None, **options),
                    show)
  if report is None:
    return EXIT_USAGE
  if show:
    sys.stderr.write("\n")
  replay = ""
  if report.verdict == "fail" and args.reproducer:
    try:
      replay = _exec.write_reproducer(report, args.reproducer, command)
      report.reproducer = replay
    except OSError as exc:
      print(f"bpref check: error: --reproducer {args.reproducer}: cannot be written "
            f"({exc.strerror or exc})", file=sys.stderr)
  print(report.json() if args.json else report.text())
  if report.verdict == "fail" and not args.json:
    if replay:
      print(f"\nreproducer: {args.reproducer} (the minimal case in bpref-wire); replay it with")
      print("  " + replay.rstrip("\n").replace("\n", "\n  "))
    else:
      print("\nreproducer: --reproducer FILE writes the minimal case in bpref-wire, to replay with "
            f"bpref check --exec {shlex.quote(command)} --replay FILE")
  if report.verdict == "fail" and args.plot:
    try:
      plot_layers(report, args.plot)
    except ImportError:
      print("bpref check: --plot needs matplotlib (pip install 'bpref[plot]'); no picture written",
            file=sys.stderr)
  return _status(report)


def _status(report) -> int:
  if report.verdict == "pass":
    return EXIT_PASS
  if report.verdict == "fail":
    return EXIT_BUG
  return EXIT_USAGE
