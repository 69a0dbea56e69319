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

A warm run of JAX's cache still traces and lowers every program, and on a 2-core machine that
is most of a warm run's time. ``jit`` keeps bpref's own programs whole: while the cache is on,
the compiled executable itself is stored beside XLA's entries and loaded in a later run
without tracing, lowering or compiling anything.

>>> from bpref import compilation
>>> with compilation.count() as seen:
...   pass
>>> seen.compilations, seen.cache_hits
(0, 0)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import os
import pickle
import sys
import tempfile
import threading
import time
import weakref

ENV_CACHE_DIR = "BPREF_CACHE_DIR"
ENV_NO_CACHE = "BPREF_NO_CACHE"

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_HIT_EVENT = "/jax/compilation_cache/cache_hits"
_TOTALS = {"compilations": 0, "cache_hits": 0}
_LISTENING = []
_COUNTING = threading.Lock()
_EXECUTABLES: list = []  # [the directory of stored executables] while use_cache has it on
_JITS = weakref.WeakSet()  # every ``jit`` alive; ``make_room`` clears the executables each holds
_ROOM = {"checked_at": 0}  # the compilation count at which ``make_room`` last counted the maps

ELEMENTAL_EMITTERS = (("xla_cpu_use_fusion_emitters", False),)
"""XLA's options (``jit``'s ``cpu_options``) for the programs that bpref compiles once for many
cases, whose compilation takes far longer than their runs: the bucket functions of
``bpref.scale.fast`` (the oracle's truth), the witnesses (``bpref.witnesses``) and the tables
of f, f', rho_f and the loss terms that bounds and tolerances read (``bpref.tables``,
``bpref.oracle.truth``). On a CPU they compile through XLA's elemental emitters in place of
its newer fusion emitters, in about two thirds of the time (docs/performance.md). bpref's
other programs keep XLA's defaults, as does what a user compiles (``bpref.backprop``,
``bpref.layers`` under the user's own ``jax.jit``). So does ``bpref verify``'s exact-shape
program of bpref's public functions: its rows compare bpref compiled as it runs in a user's
code with a witness compiled through the other emitters, and a fault of either emitter sets
the two apart instead of hiding in both."""


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
      with _COUNTING:  # compilations of several threads
        _TOTALS["compilations"] += 1

  def on_event(event, **kwargs):
    if event == _HIT_EVENT:
      with _COUNTING:
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


MAP_LIMIT = "/proc/sys/vm/max_map_count"
"""Linux's limit on a process's memory maps (65,530 by default)."""


def make_room(every: int = 200, fraction: float = 0.75) -> bool:
  """Clear the compiled programs this process holds when its memory maps near Linux's limit.

  Each compiled program keeps its machine code in memory maps of its own (about 40 for a
  small network's gradient on XLA's CPU backend, jaxlib 0.10.2), and JAX keeps every program
  it compiled: a process that compiles some 1,500 of them reaches the default limit of
  ``MAP_LIMIT``, where XLA aborts ("LLVM ERROR: Unable to allocate section memory") or
  crashes. Once ``every`` compilations have passed since the last count, this counts the maps
  (``/proc/self/maps``); past ``fraction`` of the limit it clears JAX's caches
  (``jax.clear_caches``) and the executables of ``jit``, and later calls compile again (or
  load from the persistent cache). Returns whether it cleared them; where there is no
  ``/proc`` it does nothing. bpref's pytest plugin calls it after each test and before each
  example of a hypothesis test.
  """
  _listen()
  if _TOTALS["compilations"] - _ROOM["checked_at"] < every:
    return False
  _ROOM["checked_at"] = _TOTALS["compilations"]
  try:
    with open(MAP_LIMIT, encoding="ascii") as fh:
      limit = int(fh.read())
    with open("/proc/self/maps", "rb") as fh:
      maps = sum(1 for _ in fh)
  except (OSError, ValueError):
    return False
  if maps <= fraction * limit:
    return False
  import gc

  import jax

  jax.clear_caches()
  for call in list(_JITS):
    call.clear_loaded()
  gc.collect()
  return True


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
  _EXECUTABLES[:] = [os.path.join(path, "executables")]
  prune(_EXECUTABLES[0])
  return path


CACHE_BYTES = 1 << 30
"""The most bytes the store of whole executables keeps; the least recently used go first
(``prune``). JAX's own entries are left to JAX: its eviction (``jax_compilation_cache_max_size``)
lists the whole folder under a file lock on every write, which slowed bpref's suite by a third."""


def prune(folder: str, limit: int = CACHE_BYTES, partial_age: float = 3600.0) -> None:
  """The least recently used executables in ``folder`` removed until the rest take at most
  ``limit`` bytes (a load marks one used), and files left partly written by a process that
  died (older than ``partial_age`` seconds); what cannot be read or removed is left."""
  try:
    entries = [(entry.stat().st_mtime, entry.stat().st_size, entry.path, entry.name)
               for entry in os.scandir(folder) if entry.is_file()]
  except OSError:  # not made yet, or gone
    return
  now = time.time()
  kept = []
  for mtime, size, path, name in sorted(entries, reverse=True):  # the most recent first
    if name.startswith(".partial-") and now - mtime > partial_age:
      _remove(path)
    elif name.endswith(".exe"):
      kept.append((size, path))
  total = 0
  for size, path in kept:
    total += size
    if total > limit:
      _remove(path)


def _remove(path: str) -> None:
  try:
    os.remove(path)
  except OSError:  # another process took it first, or a read-only folder
    pass


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


# ---------------------------------------------------------------- whole executables

def jit(fn=None, *, static_argnums=(), static_argnames=(), key=None, cpu_options=()):
  """``jax.jit`` of one of bpref's own functions, whose executables persist between runs.

  While ``use_cache`` has the cache on, each executable is stored whole
  (``jax.experimental.serialize_executable``) under a key made of: the function (``key``,
  else its module and qualified name), its static arguments, the shapes and dtypes of the
  others, the text of every module of bpref, JAX's version and backend, and the settings that
  change a program (x64, the default matmul precision). A later run with the same key loads it:
  no tracing, lowering or compiling; ``count`` sees it as a compilation the cache answered.
  With the cache off, with traced arguments (a caller's ``jit`` or ``vmap``), or with a static
  argument that has no stable text, it is ``jax.jit`` itself. Use it only on functions whose
  program depends on nothing but bpref's code and the arguments: a closure names what it closes
  over in ``key``.

  ``cpu_options``, (name, value) pairs of XLA's options (``ELEMENTAL_EMITTERS``), are given
  to XLA when the program compiles for a CPU, and are part of the stored key; another
  platform compiles with XLA's defaults.
  """
  if fn is None:
    return functools.partial(jit, static_argnums=static_argnums, static_argnames=static_argnames,
                             key=key, cpu_options=cpu_options)
  import jax
  import numpy as np

  static_argnums = (static_argnums,) if isinstance(static_argnums, int) else tuple(static_argnums)
  static_argnames = ((static_argnames,) if isinstance(static_argnames, str)
                     else tuple(static_argnames))
  order = [p.name for p in inspect.signature(fn).parameters.values()
           if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
  static_argnums += tuple(order.index(n) for n in static_argnames if n in order)  # as jax.jit
  static_argnames += tuple(order[i] for i in static_argnums if i < len(order))
  plain = jax.jit(fn, static_argnums=static_argnums, static_argnames=static_argnames)
  cpu_options = tuple(cpu_options)
  try:
    tuned = plain if not cpu_options else jax.jit(
        fn, static_argnums=static_argnums, static_argnames=static_argnames,
        compiler_options=dict(cpu_options))
  except TypeError:  # a JAX whose jit takes no compiler_options: XLA's defaults
    tuned = plain
  name = key or f"{fn.__module__}.{fn.__qualname__}"
  if "<" in str(name):
    raise ValueError(f"compilation.jit: {fn.__qualname__} needs a key naming what it closes over")
  loaded: dict = {}
  locks: dict = {}  # dict.setdefault is atomic under the interpreter's lock

  def pick():
    return tuned if tuned is not plain and cpu_options not in _REFUSED and _on_cpu() else plain

  @functools.wraps(fn)
  def call(*args, **kwargs):
    traced = pick()
    if traced is plain:
      return through(plain, args, kwargs)
    try:
      return through(tuned, args, kwargs)
    except Exception as err:  # an XLA that does not know an option compiles with its defaults
      if "No such compile option" not in str(err):
        raise
      _REFUSED.add(cpu_options)
      return through(plain, args, kwargs)

  def through(traced, args, kwargs):
    if not _EXECUTABLES:
      return traced(*args, **kwargs)
    static = tuple((i, args[i]) for i in static_argnums if i < len(args))
    static += tuple(sorted((k, v) for k, v in kwargs.items() if k in static_argnames))
    dynamic = ([a for i, a in enumerate(args) if i not in static_argnums],
               {k: v for k, v in kwargs.items() if k not in static_argnames})
    leaves, tree = jax.tree_util.tree_flatten(dynamic)
    settings = (jax.config.jax_enable_x64, str(jax.config.jax_default_matmul_precision),
                tuple(cpu_options) if traced is tuned else ())
    seen = (static, tree, settings,  # a cheap stand-in for the avals, within this process
            tuple((type(leaf), np.shape(leaf), getattr(leaf, "dtype", None),
                   getattr(leaf, "weak_type", False)) for leaf in leaves))
    signature = lambda: repr((name, static, str(tree),  # noqa: E731  (the stored key)
                              tuple(str(jax.typeof(leaf)) for leaf in leaves), *settings))
    executable, stored = loaded.get(seen) or (None, False)
    if executable is None:
      if not _stable(static) or any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
        return traced(*args, **kwargs)
    with locks.setdefault(seen, threading.Lock()):  # one thread compiles a program; the rest wait
      executable, stored = loaded.get(seen) or (None, False)
      if executable is None:
        executable = _load(signature())
        stored = executable is not None
      if stored:
        try:  # waited for: a stored executable that cannot run says so when its results are read
          out = jax.block_until_ready(executable(*dynamic[0], **dynamic[1]))
          loaded[seen] = (executable, True)
          return out
        except Exception:  # a stored executable that does not run here: compiled again below,
          _refuse(signature())  # and never stored again
          executable = None
      if executable is None:
        executable = _compile(traced, args, kwargs)
        _store(signature(), executable)
        loaded[seen] = (executable, False)
    return executable(*dynamic[0], **dynamic[1])

  call._cache_size = lambda: len(loaded) + plain._cache_size() + (
      tuned._cache_size() if tuned is not plain else 0)
  call.lower = lambda *args, **kwargs: pick().lower(*args, **kwargs)
  call.cpu_options = cpu_options
  call.clear_loaded = loaded.clear
  _JITS.add(call)
  return call


_REFUSED: set = set()
"""``cpu_options`` that this process's XLA refused ("No such compile option"): the programs
given them compile with XLA's defaults from then on."""


def _on_cpu() -> bool:
  """Whether this thread's programs compile for a CPU: its default device's platform
  (``jax.default_device``), else JAX's default backend."""
  import jax

  device = jax.config.jax_default_device
  if device is None:
    return jax.default_backend() == "cpu"
  return (device if isinstance(device, str) else device.platform) == "cpu"


_PAST = threading.local()
"""``_PAST.on``: this thread compiles past JAX's cache (``_compile``)."""
_PATCHING = threading.Lock()


def _compile(traced, args, kwargs):
  """A compilation of its own, past JAX's cache: an executable that JAX's cache gave back
  does not carry what another process needs to run it once serialized (on XLA's CPU backend
  its kernels are then "not found"), so the one that is stored is compiled here.

  JAX asks ``compilation_cache.is_cache_used`` in the compiling thread; it is wrapped once so
  that it answers False to a thread compiling here and asks JAX's own for every other thread,
  so that compilations in several threads go on at once."""
  try:
    from jax._src import compilation_cache
  except ImportError:
    compilation_cache = None
  if not hasattr(compilation_cache, "is_cache_used"):  # another JAX: _store's trial run decides
    return traced.lower(*args, **kwargs).compile()
  with _PATCHING:
    if not getattr(compilation_cache.is_cache_used, "past_for_bpref", False):
      used = compilation_cache.is_cache_used

      def is_cache_used(backend):
        return False if getattr(_PAST, "on", False) else used(backend)  # neither read nor written

      is_cache_used.past_for_bpref = True
      compilation_cache.is_cache_used = is_cache_used
  _PAST.on = True
  try:
    return traced.lower(*args, **kwargs).compile()
  finally:
    _PAST.on = False


def _stable(value) -> bool:
  """Whether ``repr(value)`` names the value in every process: no object addresses."""
  if isinstance(value, (tuple, list)):
    return all(_stable(v) for v in value)
  import enum

  return value is None or isinstance(value, (str, int, float, bool, enum.Enum))


@functools.lru_cache(maxsize=1)
def _environment() -> str:
  """What besides the function, its arguments and JAX's settings decides an executable."""
  import jax
  import jaxlib

  package = os.path.dirname(os.path.abspath(__file__))
  text = hashlib.sha256()
  for folder, subfolders, files in sorted(os.walk(package)):
    subfolders.sort()
    for file in sorted(f for f in files if f.endswith(".py")):
      with open(os.path.join(folder, file), "rb") as handle:
        text.update(file.encode() + b"\0" + handle.read())
  device = jax.devices()[0]
  return repr((text.hexdigest(), jax.__version__, jaxlib.__version__, device.platform,
               device.device_kind, os.environ.get("XLA_FLAGS", "")))


def _path(signature: str) -> tuple:
  full = signature + _environment()
  return full, os.path.join(_EXECUTABLES[0], hashlib.sha256(full.encode()).hexdigest() + ".exe")


def _load(signature: str):
  """The stored executable of ``signature``, or None."""
  from jax.experimental import serialize_executable

  full, path = _path(signature)
  try:
    with open(path, "rb") as handle:
      stored, payload, in_tree, out_tree = pickle.load(handle)
    if stored != full or payload is None:  # another program's, or one refused (``_refuse``)
      return None
    executable = serialize_executable.deserialize_and_load(payload, in_tree, out_tree)
  except Exception:  # absent, partly written by a process that died, or from another jaxlib
    return None
  try:
    os.utime(path)  # used now: the last that ``prune`` removes
  except OSError:
    pass
  _listen()
  with _COUNTING:
    _TOTALS["compilations"] += 1
    _TOTALS["cache_hits"] += 1
  return executable


def _store(signature: str, executable) -> None:
  """Keep ``executable`` for later runs, unless an earlier copy of it failed to run
  (``_refuse``); a directory that cannot take it turns the store off.

  It is kept without a trial run: an executable whose copy read back from its bytes fails
  (as one that JAX's cache gave back does: "Function ... not found") fails in the later run
  that loads it, and that run compiles the program again and refuses it from then on. Every
  program of bpref's, compiled past JAX's cache (``_compile``), runs read back; a trial run
  of each cost a cold ``bpref verify --quick`` 3.4 s of CPU time."""
  from jax.experimental import serialize_executable

  full, path = _path(signature)
  try:
    with open(path, "rb") as handle:
      if pickle.load(handle)[:2] == (full, None):
        return
  except Exception:  # nothing there yet, or something unreadable that the store replaces
    pass
  try:
    payload = pickle.dumps((full, *serialize_executable.serialize(executable)))
  except Exception:  # an executable that does not serialize
    return
  _write(path, payload)


def _refuse(signature: str) -> None:
  """Mark ``signature``'s executable as one that does not run once read back: ``_load``
  ignores the mark and ``_store`` keeps nothing in its place."""
  full, path = _path(signature)
  _write(path, pickle.dumps((full, None, None, None)))


def _write(path: str, payload: bytes) -> None:
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=os.path.dirname(path), delete=False,
                                     prefix=".partial-") as handle:
      handle.write(payload)
    os.replace(handle.name, path)  # whole or not at all, for processes that share the directory
  except OSError as err:
    sys.stderr.write(f"bpref: note: executables are not kept ({os.path.dirname(path)}: "
                     f"{err.strerror})\n")
    _EXECUTABLES.clear()
