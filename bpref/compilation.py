"""XLA compilations: counting them, and JAX's persistent compilation cache.

Nearly all of a cold check's time is compilation, so the count is the figure that
matters, and it does not depend on the machine: ``count()`` reads it from
``jax.monitoring``. The ``bpref`` commands and the pytest helpers of ``bpref.testing``
keep the compiled executables between runs in a persistent cache (``use_cache``): the
directory ``--cache-dir`` or ``$BPREF_CACHE_DIR`` names, else ``$XDG_CACHE_HOME/bpref/xla``
(``~/.cache/bpref/xla``). ``--no-cache`` or ``BPREF_NO_CACHE=1`` turns it off; a default
directory that cannot be written is left out with one line on stderr. The ``--json`` reports
of ``bpref check`` and ``bpref verify`` say how many compilations a run made and how many the
cache answered.

>>> from bpref import compilation
>>> with compilation.count() as seen:
...   pass
>>> seen.compilations, seen.cache_hits
(0, 0)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import tempfile

ENV_CACHE_DIR = "BPREF_CACHE_DIR"
ENV_NO_CACHE = "BPREF_NO_CACHE"

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_HIT_EVENT = "/jax/compilation_cache/cache_hits"
_TOTALS = {"compilations": 0, "cache_hits": 0}
_LISTENING = []


@dataclasses.dataclass
class Seen:
  """What ``count`` saw: XLA compilations (cache hits included) and persistent-cache hits."""
  compilations: int = 0
  cache_hits: int = 0
  cache_dir: str | None = None

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def _listen() -> None:
  if _LISTENING:
    return
  from jax import monitoring

  def on_duration(event, duration, **kwargs):
    if event == _COMPILE_EVENT:
      _TOTALS["compilations"] += 1

  def on_event(event, **kwargs):
    if event == _HIT_EVENT:
      _TOTALS["cache_hits"] += 1

  monitoring.register_event_duration_secs_listener(on_duration)
  monitoring.register_event_listener(on_event)
  _LISTENING.append(True)


@contextlib.contextmanager
def count():
  """Count the compilations made inside the block (any thread of this process)."""
  _listen()
  seen = Seen(cache_dir=cache_dir())
  start = dict(_TOTALS)
  try:
    yield seen
  finally:
    seen.compilations = _TOTALS["compilations"] - start["compilations"]
    seen.cache_hits = _TOTALS["cache_hits"] - start["cache_hits"]


def cache_dir() -> str | None:
  """The persistent cache directory in use, or None."""
  import jax

  return jax.config.jax_compilation_cache_dir or None


def add_cache_arguments(parser) -> None:
  """--cache-dir DIR and --no-cache, exclusive, on an argparse parser (or group)."""
  cache = parser.add_mutually_exclusive_group()
  cache.add_argument("--cache-dir", metavar="DIR", default=None,
                     help="keep XLA compilations in DIR between runs (default: $BPREF_CACHE_DIR, "
                          "else $XDG_CACHE_HOME/bpref/xla)")
  cache.add_argument("--no-cache", action="store_true",
                     help="no persistent compilation cache (also BPREF_NO_CACHE=1)")


def default_cache_dir() -> str | None:
  """Where the cache lives unless told otherwise: $BPREF_CACHE_DIR, else the user's cache
  directory (XDG); None when $BPREF_NO_CACHE is set to anything but "" or "0"."""
  if os.environ.get(ENV_NO_CACHE, "") not in ("", "0"):
    return None
  if os.environ.get(ENV_CACHE_DIR):
    return os.environ[ENV_CACHE_DIR]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "bpref", "xla")


def use_cache(path: str | None = None, *, default: bool = False) -> str | None:
  """Turn on JAX's persistent compilation cache in ``path``; return the directory, or None.

  Every compilation is cached, however small or quick (JAX's defaults skip those under a
  second, which are nearly all of bpref's). Without ``path`` the directory is
  $BPREF_CACHE_DIR, or with ``default`` the user's cache directory (``default_cache_dir``).
  A directory that was named (``path``, $BPREF_CACHE_DIR) and cannot be created or written is a
  ValueError; the user's default one is then left out with one line on stderr, never an error.
  """
  import jax

  if not path and jax.config.jax_compilation_cache_dir:
    return jax.config.jax_compilation_cache_dir  # already on (an earlier call, or the caller's own)
  named = path or (os.environ.get(ENV_CACHE_DIR) if os.environ.get(ENV_NO_CACHE, "") in ("", "0")
                   else None)
  if not named and not default:
    return None
  path = named or default_cache_dir()
  if not path:
    return None
  path = os.path.abspath(os.path.expanduser(path))
  problem = _unwritable(path)
  if problem:
    if named:
      raise ValueError(f"cache directory {path!r} {problem}")
    sys.stderr.write(f"bpref: note: no compilation cache ({path} {problem}); set "
                     f"{ENV_CACHE_DIR} or {ENV_NO_CACHE}=1\n")
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path


def _unwritable(path: str) -> str:
  """Why ``path`` cannot hold the cache, or "" when it can."""
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as err:
    return f"cannot be created: {err.strerror}"
  try:
    with tempfile.NamedTemporaryFile(dir=path, prefix=".bpref-probe-"):
      pass
  except OSError as err:
    return f"cannot be written: {err.strerror}"
  return ""
