"""``bpref check --op KIND``: the op oracle from the command line.

  bpref check --op activation --op-name relu --function mylayers:relu_backward
  bpref check --op dense --layout in_out --function mylayers.py:affine_backward_op
  bpref check --op loss --op-name cross_entropy --takes probs --targets labels --function m:f

  bpref check --op layernorm --exec ./layers       (a program in any language: docs/protocol.md)

``--function`` (or the positional MODULE:ATTR) names a plain backward function (see
``bpref.oracle.ops``), a ``torch.autograd.Function`` subclass or a ``jax.custom_vjp`` function;
the last two are adapted and their forward is checked too. The candidate runs in a subprocess
(``--in-process``: in this one), so that an exit, a crash or an exit while it is imported is a
failure, exit 1. ``--workers N`` runs it in N subprocesses side by side, and ``--dask ADDRESS``
on a Dask cluster's workers, with the verdict and minimal case of one worker. ``--exec COMMAND``
names a program speaking bpref-wire version 2 instead, whose hello declares the op
(``bpref.oracle.ops.wire_ops``; ``--workers N`` runs N copies of it); ``--reproducer FILE`` then
writes the minimal case as the bytes bpref sent it. Exit codes: 0 pass, 1 bug found, 2 usage
error (bad options, a candidate that cannot be loaded, a program whose hello does not declare
the op).
"""

from __future__ import annotations

import argparse
import os
import sys

from bpref.oracle.ops import kinds

EXIT_PASS, EXIT_BUG, EXIT_USAGE = 0, 1, 2


def _add(parser, *flags, **options) -> None:
  """Add an option unless the parser has it already (``bpref check`` shares --dtype and others)."""
  if not any(flag in parser._option_string_actions for flag in flags):
    parser.add_argument(*flags, **options)


def add_op_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
  """Add the op options to ``parser``; options it already has (--dtype, --seed, ...) are shared.

  The options: --op KIND, --op-name NAME, --function MODULE:ATTR, --takes, --targets,
  --strict-conventions, and where absent --layout, --no-bias, --reduction, --dtype,
  --examples, --seed, --timeout, --json.
  """
  g = parser.add_argument_group("one operation (--op)")
  g.add_argument("--op", choices=kinds.KINDS, metavar="KIND",
                 help=f"check one operation's backward function: {', '.join(kinds.KINDS)}")
  g.add_argument("--op-name", metavar="NAME",
                 help="the activation (--op activation, layer) or loss (--op loss)")
  g.add_argument("--function", metavar="MODULE:ATTR",
                 help="the backward function, a torch.autograd.Function subclass or a "
                      "jax.custom_vjp function (module:attr or path/to/file.py:attr)")
  g.add_argument("--takes", default=None,
                 help="what the candidate is handed: z or a (activation), z or y (softmax), "
                      "y, logits or probs (loss); default the first")
  g.add_argument("--targets", choices=("probabilities", "labels"), default=None,
                 help="a loss's targets: probability rows (the default), or one class index per row")
  g.add_argument("--signature", choices=("bpref", "cs231n"), default=None,
                 help="how the function is called: bpref (the default; arguments as in "
                      "docs/oracle.md) or cs231n: (dout, cache), as CS231n's relu_backward, "
                      "affine_backward (with --layout in_out) and affine_relu_backward take them")
  g.add_argument("--strict-conventions", action="store_true",
                 help="a kink convention or gelu's tanh approximation counts as a bug")
  _add(parser, "--layout", default=None,
       help="how the candidate holds its arrays: out_in (W is (n_out, n_in), the default) or "
            "in_out ((n_in, n_out)) for dense and layer; btc or nc for layernorm; llmc or torch "
            "for attention")
  g.add_argument("--eps", type=float, default=None, help="layernorm's epsilon (default 1e-5)")
  g.add_argument("--heads", type=int, default=None,
                 help="attention's number of heads (default: 1, 2 and 3 searched)")
  _add(parser, "--no-bias", action="store_true", help="the dense layer has no bias")
  _add(parser, "--reduction", choices=("mean", "sum"), default="mean")
  _add(parser, "--dtype", choices=("float64", "float32"), default="float64")
  _add(parser, "--examples", type=int, default=40, help="random cases after the probes")
  _add(parser, "--seed", type=int, default=0)
  _add(parser, "--timeout", type=float, default=60.0, help="seconds per candidate call")
  _add(parser, "--json", action="store_true", help="print the report as JSON")
  return parser


def _loadable(ref: str) -> None:
  """ValueError, a usage error, when ``ref`` cannot name anything (the file or the name is missing)."""
  where, sep, attr = ref.rpartition(":")
  if not sep or not where or not attr:
    raise ValueError(f"{ref!r}: name the candidate as module:function or path/to/file.py:function")
  if (where.endswith(".py") or "/" in where) and not os.path.isfile(where):
    raise ValueError(f"{where}: no such file")


def run_op_command(args: argparse.Namespace) -> int:
  """Run ``bpref check --op`` from parsed arguments; print the report; return the exit status."""
  from bpref.oracle import isolation as _isolation
  from bpref.oracle.ops import check_op, wire_ops

  if not args.op:
    print("bpref check: error: --op KIND is needed for an op check", file=sys.stderr)
    return EXIT_USAGE
  command = getattr(args, "exec_command", None)
  if not args.function and command is None:
    print("bpref check: error: --op needs --function MODULE:ATTR naming the backward function, "
          "or --exec COMMAND naming a program that speaks bpref-wire version 2", file=sys.stderr)
    return EXIT_USAGE
  in_process = getattr(args, "in_process", False)
  options = dict(takes=args.takes or "", layout=args.layout or "", bias=not args.no_bias,
                 reduction=args.reduction, targets=args.targets or "probabilities",
                 dtype=args.dtype, examples=args.examples, seed=args.seed, timeout=args.timeout,
                 strict_conventions=args.strict_conventions,
                 signature=args.signature or "bpref")
  options.update({k: getattr(args, k) for k in ("max_batch", "max_width", "shrink_budget", "eps", "heads")
                  if getattr(args, k, None) is not None})
  workers, cluster = getattr(args, "workers", 1), getattr(args, "dask", None)
  replayed = getattr(args, "replay", None)
  if command is not None and replayed:
    try:
      passed, text = wire_ops.replay(command, replayed, timeout=args.timeout)
    except ValueError as exc:
      print(f"bpref check: error: {exc}", file=sys.stderr)
      return EXIT_USAGE
    print(text)
    return EXIT_PASS if passed else EXIT_BUG
  try:
    if command is not None:
      report = check_op(args.op, name=args.op_name, exec_command=command, workers=workers,
                        **options)
    else:
      if in_process:
        candidate = _isolation.load_target(args.function)
      else:
        kinds.make_spec(args.op, args.op_name, **options)  # bad options: a usage error before spawning
        candidate = _isolation.absolute_target(args.function)
        _loadable(candidate)
      report = check_op(args.op, candidate, name=args.op_name, isolate=not in_process,
                        workers=workers, cluster=cluster, **options)
  except (ValueError, TypeError) as exc:
    print(f"bpref check: error: {exc}", file=sys.stderr)
    return EXIT_USAGE
  reproducer = getattr(args, "reproducer", None)
  if command is not None and report.verdict == "fail" and report.case:  # the bytes bpref sent
    report.reproducer = wire_ops.replay_text(command, reproducer or "REPRO.wire", args.op,
                                             args.op_name)
  print(report.json() if args.json else report.text())
  if command is not None and report.reproducer and not args.json:
    print(f"\nreproducer: {reproducer} (the minimal case in bpref-wire); send it to the program "
          f"alone with\n  {report.reproducer.rstrip()}" if reproducer else "\nreproducer: "
          "--reproducer FILE writes the minimal case in bpref-wire, to send to the program alone: "
          f"{command} < FILE")
  if report.verdict == "fail" and reproducer and report.reproducer:
    try:
      if command is not None:
        with open(reproducer, "wb") as fh:
          fh.write(wire_ops.reproducer_bytes(kinds.make_spec(**report.spec), report.case))
      else:
        with open(reproducer, "w") as fh:
          fh.write(report.reproducer)
    except OSError as exc:
      print(f"bpref check: error: --reproducer {reproducer}: cannot be written "
            f"({exc.strerror or exc})", file=sys.stderr)
  if report.verdict == "pass":
    return EXIT_PASS
  return EXIT_BUG if report.verdict == "fail" else EXIT_USAGE
