"""XLA compilations: counting them, and JAX's persistent compilation cache (opt-in).

Nearly all of a cold check's time is compilation, so the count is the figure that
matters, and it does not depend on the machine: ``count()`` reads it from
``jax.monitoring``. A CI job that sets

    BPREF_CACHE_DIR=$HOME/.cache/bpref-xla

(or passes ``--cache-dir``) keeps the compiled executables between runs; the
``--json`` reports of ``bpref check`` and ``bpref verify`` say how many
compilations a run made and how many the cache answered.

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

ENV_CACHE_DIR = "BPREF_CACHE_DIR"

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


def use_cache(path: str | None = None) -> str | None:
  """Turn on JAX's persistent compilation cache in ``path`` (default: $BPREF_CACHE_DIR).

  Every compilation is cached, however small or quick (JAX's defaults skip those
  under a second, which are nearly all of bpref's). Returns the directory, or None
  when neither ``path`` nor the environment names one.
  """
  path = path or os.environ.get(ENV_CACHE_DIR) or None
  if not path:
    return None
  import jax

  path = os.path.abspath(os.path.expanduser(path))
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as err:
    raise ValueError(f"cache directory {path!r} cannot be created: {err.strerror}") from None
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path
