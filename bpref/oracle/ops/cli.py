"""``bpref check --op KIND``: the op oracle from the command line.

  bpref check --op activation --op-name relu --function mylayers:relu_backward
  bpref check --op dense --layout in_out --function mylayers.py:affine_backward_op
  bpref check --op loss --op-name cross_entropy --takes probs --targets labels --function m:f

``--function`` names a plain backward function (see ``bpref.oracle.ops``), a
``torch.autograd.Function`` subclass or a ``jax.custom_vjp`` function; the last two are adapted
and their forward is checked too. The candidate runs in this process. Exit codes: 0 pass,
1 bug found, 2 usage error (bad options, a candidate that cannot be loaded).
"""

from __future__ import annotations

import argparse
import sys

from bpref.oracle.ops import _kinds

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
  g.add_argument("--op", choices=_kinds.KINDS, metavar="KIND",
                 help=f"check one operation's backward function: {', '.join(_kinds.KINDS)}")
  g.add_argument("--op-name", metavar="NAME",
                 help="the activation (--op activation, layer) or loss (--op loss)")
  g.add_argument("--function", metavar="MODULE:ATTR",
                 help="the backward function, a torch.autograd.Function subclass or a "
                      "jax.custom_vjp function (module:attr or path/to/file.py:attr)")
  g.add_argument("--takes", default="",
                 help="what the candidate is handed: z or a (activation), z or y (softmax), "
                      "y, logits or probs (loss); default the first")
  g.add_argument("--targets", choices=("probabilities", "labels"), default="probabilities",
                 help="a loss's targets: probability rows, or one class index per row")
  g.add_argument("--strict-conventions", action="store_true",
                 help="a kink convention or gelu's tanh approximation counts as a bug")
  _add(parser, "--layout", choices=("out_in", "in_out"), default="out_in",
       help="out_in: W is (n_out, n_in); in_out: (n_in, n_out)")
  _add(parser, "--no-bias", action="store_true", help="the dense layer has no bias")
  _add(parser, "--reduction", choices=("mean", "sum"), default="mean")
  _add(parser, "--dtype", choices=("float64", "float32"), default="float64")
  _add(parser, "--examples", type=int, default=40, help="random cases after the probes")
  _add(parser, "--seed", type=int, default=0)
  _add(parser, "--timeout", type=float, default=60.0, help="seconds per candidate call")
  _add(parser, "--json", action="store_true", help="print the report as JSON")
  return parser


def run_op_command(args: argparse.Namespace) -> int:
  """Run ``bpref check --op`` from parsed arguments; print the report; return the exit status."""
  from bpref.oracle import isolation as _isolation
  from bpref.oracle.ops import check_op

  if not args.op:
    print("bpref check: error: --op KIND is needed for an op check", file=sys.stderr)
    return EXIT_USAGE
  if not args.function:
    print("bpref check: error: --op needs --function MODULE:ATTR naming the backward function",
          file=sys.stderr)
    return EXIT_USAGE
  try:
    candidate = _isolation.load_target(args.function)
    options = dict(takes=args.takes, layout=args.layout, bias=not args.no_bias,
                   reduction=args.reduction, targets=args.targets, dtype=args.dtype,
                   examples=args.examples, seed=args.seed, timeout=args.timeout,
                   strict_conventions=args.strict_conventions)
    report = check_op(args.op, candidate, name=args.op_name, **options)
  except (ValueError, TypeError) as exc:
    print(f"bpref check: error: {exc}", file=sys.stderr)
    return EXIT_USAGE
  print(report.json() if args.json else report.text())
  if report.verdict == "pass":
    return EXIT_PASS
  return EXIT_BUG if report.verdict == "fail" else EXIT_USAGE
