"""bpref's pytest plugin: on wherever bpref is installed, off with ``pytest -p no:bpref``.

It is registered as the ``pytest11`` entry point ``bpref`` (pyproject.toml), so a suite
that uses ``bpref.testing`` gets, with nothing in its conftest:

* **The persistent compilation cache** (``bpref.compilation``): XLA's programs are kept in
  pytest's cache directory, ``.pytest_cache/d/bpref-xla``, or in ``$BPREF_CACHE_DIR`` when
  it is set; ``BPREF_NO_CACHE=1`` turns it off, and a cache the run already turned on (a
  conftest's ``jax_compilation_cache_dir``) is left as it is. The process that starts the
  run decides, and exports the folder as ``$BPREF_CACHE_DIR``, so that pytest-xdist's
  workers and any ``bpref`` command a test starts share it.
* **One hypothesis profile with CI set or not**: hypothesis loads its ``ci`` profile by
  itself under any ``CI`` variable (no deadline, derandomized), so the same suite could
  pass in CI and fail on a laptop, where the first example of a property test compiles
  for longer than the 200 ms deadline. Unless the run chose a profile (a conftest's
  ``settings.load_profile``, ``--hypothesis-profile``), the plugin loads ``bpref``:
  hypothesis's defaults (100 examples) with its CI settings everywhere: no deadline,
  derandomized, no example database, the failure blob printed, the too_slow and
  data_too_large health checks off, and no "explain" phase (its list of lines run).
* **Short failures**: ``assert_backprop_correct`` and ``assert_op_correct`` hide their own
  frames, print the oracle's report once and the path of a reproducer script (written to
  ``.pytest_cache/d/bpref-reproducers``, ``$BPREF_REPRODUCER_DIR``), and the short test
  summary shows one line that names the diagnosis, with ``CI`` set or not (pytest prints
  a whole message there under CI).
* **The helpers' worker started early**: when the last run in this project's cache folder
  ran its checks in the helpers' isolated worker, the plugin starts that worker before the
  conftests load, importing the installed packages (site-packages) the last one had imported,
  so that the first check does not wait for them; never the project's own modules. The list
  is ``worker-preload.json`` in the cache folder; a run that used no worker removes it
  (``--collect-only`` leaves it).
* **Room for programs**: after each test and before each example of a hypothesis test, a
  process whose memory maps near Linux's limit has JAX's compiled programs cleared
  (``bpref.compilation.make_room``), instead of XLA aborting once some 1,500 programs have
  been compiled in one process.
* **A summary line**: checks run and failed, ``reference_grads`` evaluations, XLA
  compilations and how many the persistent cache answered, summed over xdist's workers.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import json
import os
import sys

import pytest

from bpref import compilation
from bpref.testing import _assert

PROFILE = "bpref"
"""The hypothesis profile the plugin registers and loads where the run chose none."""

CACHE_FOLDER = "bpref-xla"
PRELOAD = "worker-preload.json"
"""In the cache folder: the installed packages the last run's isolated worker imported."""
REPRODUCER_FOLDER = "bpref-reproducers"

_STATE = pytest.StashKey[dict]()
_COUNTS = ("checks", "failed", "references", "compilations", "cache_hits")


def pytest_load_initial_conftests(early_config, parser, args):
  path = _preload_path(early_config, early_config.known_args_namespace)
  try:
    with open(path or "", encoding="utf-8") as fh:
      record = json.load(fh)
  except (OSError, ValueError):  # no record: the worker starts at the first check
    return
  if not isinstance(record, dict) or record.get("python") != sys.executable:
    return  # another interpreter's packages
  modules = record.get("modules")
  if isinstance(modules, list):
    _assert.prestart([name for name in modules if isinstance(name, str)])


def _preload_path(config, options) -> str | None:
  """The record of what the helpers' worker imported: in the cache folder that ``_use_cache``
  picks when that folder is the project's ($BPREF_CACHE_DIR or pytest's cache), not under
  xdist's controller, which runs no test."""
  if os.environ.get(compilation.ENV_NO_CACHE, "") not in ("", "0"):
    return None
  if getattr(options, "numprocesses", None) and not os.environ.get("PYTEST_XDIST_WORKER"):
    return None
  folder = os.environ.get(compilation.ENV_CACHE_DIR)
  if not folder:
    if config.pluginmanager.is_blocked("cacheprovider"):
      return None
    cache = os.path.expanduser(os.path.expandvars(config.getini("cache_dir")))
    folder = os.path.join(config.rootpath, cache, "d", CACHE_FOLDER)
  return os.path.join(folder, PRELOAD)


def _remember_worker(config, state) -> None:
  """Write what the session's worker imported for the next run, or remove the record when no
  worker ran a check (an xdist worker only writes: another one may have used its own; a run
  that only collects leaves it)."""
  path = state["preload"]
  installed = _assert.session_imports()
  if path is None:
    return
  try:
    if installed:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      temporary = f"{path}.{os.getpid()}"
      with open(temporary, "w", encoding="utf-8") as fh:
        json.dump({"python": sys.executable, "modules": installed}, fh)
      os.replace(temporary, path)
    elif not hasattr(config, "workerinput") and not config.option.collectonly:
      os.remove(path)
  except OSError:  # a read-only or vanished folder: the next run starts its worker late
    pass


def pytest_configure(config):
  state = {"env": {}, "counting": contextlib.ExitStack(), "workers": collections.Counter(),
           "seen": None, "tally": dict(_assert.TALLY), "cache": None,
           "preload": _preload_path(config, config.option)}
  config.stash[_STATE] = state
  state["cache"] = _use_cache(config, state)
  folder = os.environ.get(_assert.ENV_REPRODUCER_DIR) or _cache_folder(config, REPRODUCER_FOLDER)
  if folder:
    _export(state, _assert.ENV_REPRODUCER_DIR, folder)
  _load_profile(config, state)
  state["seen"] = state["counting"].enter_context(compilation.count())


def _cache_folder(config, name: str) -> str | None:
  cache = getattr(config, "cache", None)  # None under -p no:cacheprovider
  return None if cache is None else str(cache.mkdir(name))


def _export(state, name: str, value: str) -> None:
  """Set ``$name`` for this run (xdist's workers and the tests' subprocesses inherit it)."""
  if name not in state["env"]:
    state["env"][name] = os.environ.get(name)
  os.environ[name] = value


def _use_cache(config, state) -> str | None:
  if compilation.cache_dir():  # the run's own choice (a conftest), or an earlier configure
    return compilation.cache_dir()
  if os.environ.get(compilation.ENV_NO_CACHE, "") not in ("", "0"):
    return None
  path = (os.environ.get(compilation.ENV_CACHE_DIR) or _cache_folder(config, CACHE_FOLDER)
          or compilation.default_cache_dir())
  try:
    path = compilation.use_cache(path)
  except ValueError as err:
    raise pytest.UsageError(f"bpref: {err}; set {compilation.ENV_CACHE_DIR} to a writable "
                            f"folder, or {compilation.ENV_NO_CACHE}=1") from None
  _export(state, compilation.ENV_CACHE_DIR, path)
  return path


def _load_profile(config, state) -> None:
  """Load ``PROFILE`` unless the run chose a hypothesis profile (module docstring)."""
  try:
    from hypothesis import HealthCheck, Phase, settings
  except ImportError:  # no hypothesis: nothing to set
    return
  try:
    if config.getoption("--hypothesis-profile"):
      return
  except ValueError:  # hypothesis's own plugin is off (-p no:hypothesispytest)
    pass
  name = settings.get_current_profile_name()
  builtin = sys.modules.get("hypothesis._settings")  # the profiles hypothesis loads by itself
  automatic = {"default": getattr(builtin, "default", None), "ci": getattr(builtin, "CI", None)}
  if name not in automatic or (automatic[name] is not None
                               and settings.get_profile(name) is not automatic[name]):
    return  # the user's (a conftest registered or loaded it)
  settings.register_profile(
      PROFILE, parent=settings.get_profile("default"), deadline=None, derandomize=True,
      database=None, print_blob=True, phases=[p for p in Phase if p.name != "explain"],
      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
  settings.load_profile(PROFILE)
  state["profile"] = name  # loaded again when the run ends


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  outcome = yield
  report = outcome.get_result()
  error = call.excinfo.value if call.excinfo is not None else None
  crash = getattr(report.longrepr, "reprcrash", None)
  if report.failed and getattr(error, "bpref_report", None) is not None and crash is not None:
    # the short summary's line: the first line of the message (it names the diagnosis)
    report.longrepr.reprcrash = dataclasses.replace(crash, message=crash.message.splitlines()[0])


def pytest_runtest_setup(item):
  _room_between_examples(getattr(item, "obj", None))


def pytest_runtest_teardown(item, nextitem):
  compilation.make_room()


def _room_between_examples(test) -> None:
  """``make_room`` before each example of a hypothesis test as well: one test of many examples
  can compile past the limit on its own. Through ``test.hypothesis.inner_test``, which
  hypothesis lets a plugin replace to run its own logic around each example."""
  handle = getattr(test, "hypothesis", None)
  inner = getattr(handle, "inner_test", None)
  if inner is None or getattr(inner, "makes_room", False):
    return

  @functools.wraps(inner)
  def each_example(*args, **kwargs):
    compilation.make_room()
    return inner(*args, **kwargs)

  each_example.makes_room = True
  handle.inner_test = each_example


def _counts(state) -> dict:
  """This process's counts since the run began."""
  seen = state["seen"]
  out = {key: _assert.TALLY[key] - state["tally"].get(key, 0)
         for key in ("checks", "failed", "references")}
  out.update(compilations=seen.compilations, cache_hits=seen.cache_hits)
  return out


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
  state = session.config.stash.get(_STATE, None)
  if state is None:
    return
  state["counting"].close()  # fills in state["seen"]
  _remember_worker(session.config, state)
  _assert.close_session()  # the isolated worker the helpers' checks ran in
  if hasattr(session.config, "workeroutput"):  # an xdist worker: the controller adds them up
    session.config.workeroutput["bpref"] = _counts(state)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
  state = node.config.stash.get(_STATE, None)
  counts = getattr(node, "workeroutput", {}).get("bpref")
  if state is not None and counts:
    state["workers"].update(counts)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
  state = config.stash.get(_STATE, None)
  if state is None or hasattr(config, "workerinput"):
    return
  counts = collections.Counter(_counts(state))
  counts.update(state["workers"])
  if not any(counts[key] for key in _COUNTS):
    return
  cache = (f", {counts['cache_hits']} read from the persistent cache in {state['cache']}"
           if state["cache"] else " (no persistent cache)")
  failed = f" ({counts['failed']} failed)" if counts["failed"] else ""
  terminalreporter.write_line(
      f"bpref: {counts['checks']} oracle checks{failed}, {counts['references']} reference "
      f"evaluations; {counts['compilations']} XLA compilations{cache}")


def pytest_unconfigure(config):
  _assert.close_session()  # a worker started early for a run that ended before its session
  state = config.stash.get(_STATE, None)
  if state is None:
    return
  state["counting"].close()
  if state.get("profile"):
    from hypothesis import settings

    if settings.get_current_profile_name() == PROFILE:
      settings.load_profile(state["profile"])
  for name, value in state["env"].items():
    if value is None:
      os.environ.pop(name, None)
    else:
      os.environ[name] = value
