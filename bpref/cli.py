"""The ``bpref`` command: each subcommand lives in its own module with a ``main(argv)``.

When the reader of stdout goes away (``bpref check ... | head -1``), the command stops
quietly with status EXIT_BROKEN_PIPE, the status a shell shows for a program ended by
SIGPIPE, instead of a BrokenPipeError traceback.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import os
import sys

EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE: stdout's reader closed the pipe before everything was written."""

SUBCOMMANDS = {
    "verify": ("bpref.tools.verify", "compare bpref with its witnesses on random networks"),
    "check": ("bpref.oracle.cli", "check another backprop implementation"),
    "vectors": ("bpref.oracle.vectors", "export or check golden test vectors"),
    "bench": ("bpref.tools.bench", "benchmark bpref against the autodiff witness"),
    "train": ("bpref.tools.train", "train an MLP with bpref's gradients and optax"),
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
  try:
    code = _dispatch(list(sys.argv[1:] if argv is None else argv))
    sys.stdout.flush()
  except BrokenPipeError:
    _silence_stdout()
    return EXIT_BROKEN_PIPE
  return code


def _dispatch(argv) -> int:
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
  command = importlib.import_module(found[argv[0]][0])
  _fewer_collections()
  return int(command.main(argv[1:]) or 0)


def _fewer_collections() -> None:
  """Python's cyclic collector, set for a process that traces programs. Tracing makes many
  short-lived containers, and at Python's default (a first-generation collection every 700)
  a cold ``bpref verify --quick`` made 680 collections that took 1.1 s, each holding the
  interpreter's lock (``gc.callbacks``). What is imported by now is frozen, never scanned
  again, and the first generation is collected every 50,000 allocations: 6 collections,
  0.12 s."""
  gc.freeze()
  gc.set_threshold(50_000, 50, 50)


def _silence_stdout() -> None:
  """Point stdout at /dev/null, so that the flush at exit does not fail again (the usual EPIPE
  handling: https://docs.python.org/3/library/signal.html#note-on-sigpipe)."""
  try:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
  except (OSError, ValueError, AttributeError):  # no file descriptor behind sys.stdout
    pass


if __name__ == "__main__":
  sys.exit(main())
