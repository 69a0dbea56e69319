"""The ``bpref`` command: each subcommand lives in its own module with a ``main(argv)``."""

from __future__ import annotations

import importlib
import importlib.util
import sys

SUBCOMMANDS = {
    "verify": ("bpref.verify", "compare bpref with its witnesses on random networks"),
    "check": ("bpref.oracle.cli", "check another backprop implementation"),
    "vectors": ("bpref.vectors", "export or check golden test vectors"),
    "bench": ("bpref.bench", "benchmark bpref against the autodiff witness"),
    "train": ("bpref.train", "train an MLP with bpref's gradients and optax"),
}


def _available():
  found = {}
  for name, (module, text) in SUBCOMMANDS.items():
    try:
      if importlib.util.find_spec(module) is not None:
        found[name] = (module, text)
    except ModuleNotFoundError:
      pass
  return found


def _usage(found) -> str:
  lines = ["usage: bpref <command> [options]", "", "commands:"]
  lines += [f"  {name:10} {text}" for name, (_, text) in found.items()]
  lines += ["", "bpref <command> --help shows a command's options."]
  return "\n".join(lines)


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  found = _available()
  if not argv or argv[0] in ("-h", "--help"):
    print(_usage(found))
    return 0 if argv else 2
  if argv[0] == "--version":
    from bpref import __version__
    print(__version__)
    return 0
  if argv[0] not in found:
    print(f"bpref: unknown command {argv[0]!r}\n\n{_usage(found)}", file=sys.stderr)
    return 2
  return int(importlib.import_module(found[argv[0]][0]).main(argv[1:]) or 0)


if __name__ == "__main__":
  sys.exit(main())
