"""Compilations are counted, not timed: a default check compiles a fixed handful of times.

Each check runs in a fresh interpreter, so nothing is compiled before it starts. The
budgets are the counts of the padded design (one function per bucket and per
elementwise function), so a change that compiles once per network shape again fails.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from bpref import compilation

HERE = os.path.dirname(os.path.abspath(__file__))

_CHECK = r"""
import json, sys
sys.path.insert(0, {here!r})
import bpref.oracle, textbook
from bpref import compilation
with compilation.count() as seen:
  report = bpref.oracle.check(textbook.grads, dtype={dtype!r}, examples={examples})
print(json.dumps({{"verdict": report.verdict, "cases": report.cases, **seen.to_json()}}))
"""

DEFAULT_CHECK_BUDGET = 12
"""The issue's target: one bucket function, one loss function, and f, f' and rho_f of the four
default activations at one padded length."""


def _fresh(script: str, env=None) -> dict:
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("dtype, examples", [("float64", 40), ("float32", 200)])
def test_a_default_check_compiles_within_its_budget(dtype, examples):
  seen = _fresh(_CHECK.format(here=HERE, dtype=dtype, examples=examples))
  assert seen["verdict"] == "pass"
  assert seen["cases"] >= examples  # the count covers a whole search, not an early stop
  assert 1 <= seen["compilations"] <= DEFAULT_CHECK_BUDGET, seen


VERIFY_QUICK_BUDGET = 24
"""bpref verify --quick's functions, 20 in all: bpref's buckets and its lambdas in each dtype (4),
the autodiff witness's padded twin in float64 (1), 3 exact-shape cases per dtype (6), the
truth's tables of f, f' and rho_f, its loss terms and its softmax (5), and per dtype the
finite-difference estimates and the autodiff witness's padded gradient (4); a few to spare
(it was 258, then 116, nearly all per network shape)."""


def test_verify_quick_compiles_within_its_budget():
  proc = subprocess.run([sys.executable, "-m", "bpref", "verify", "--quick", "--json", "--no-progress"],
                        capture_output=True, text=True, timeout=900)
  summary = json.loads(proc.stdout)
  assert proc.returncode == 0 and summary["passed"], proc.stderr[-3000:]
  assert summary["witnesses"]["cases_per_dtype"] == 5 and summary["cases_per_dtype"] == 20
  assert 1 <= summary["compilation"]["compilations"] <= VERIFY_QUICK_BUDGET, summary["compilation"]


def test_count_sees_a_compilation_and_nothing_else():
  import jax
  import jax.numpy as jnp

  v = jnp.arange(7.0).block_until_ready()
  with compilation.count() as seen:
    jax.jit(lambda v: jnp.sin(v) * 3.0 + 0.125)(v).block_until_ready()
  assert seen.compilations == 1
  with compilation.count() as again:
    pass
  assert again.compilations == 0


def test_the_persistent_cache_answers_a_second_cli_run(tmp_path):
  cache = tmp_path / "xla"
  target = tmp_path / "cand.py"
  target.write_text(f"import sys\nsys.path.insert(0, {HERE!r})\nfrom textbook import grads\n")
  cmd = [sys.executable, "-m", "bpref", "check", f"{target}:grads", "--in-process", "--json",
         "--examples", "5", "--max-depth", "2", "--cache-dir", str(cache)]
  first = json.loads(subprocess.run(cmd, capture_output=True, text=True, timeout=600).stdout)
  second = json.loads(subprocess.run(cmd, capture_output=True, text=True, timeout=600).stdout)
  assert first["verdict"] == second["verdict"] == "pass"
  assert first["compilation"]["cache_dir"] == str(cache)
  assert first["compilation"]["cache_hits"] == 0 and first["compilation"]["compilations"] >= 1
  assert second["compilation"]["cache_hits"] >= 1
  assert any(cache.iterdir())


def test_an_uncreatable_cache_dir_is_a_usage_error(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  proc = subprocess.run([sys.executable, "-m", "bpref", "check", "x.py:f", "--cache-dir",
                         str(blocker / "sub")], capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2
  assert "cannot be created" in proc.stderr


# ---------------------------------------------------------------- the persistent cache, on by default

@pytest.fixture
def no_cache_yet(monkeypatch):
  """This process with no persistent cache configured (the suite's own is put back after)."""
  import jax

  before, stored = jax.config.jax_compilation_cache_dir, list(compilation._EXECUTABLES)
  jax.config.update("jax_compilation_cache_dir", None)
  compilation._EXECUTABLES.clear()
  for name in (compilation.ENV_CACHE_DIR, compilation.ENV_NO_CACHE):
    monkeypatch.delenv(name, raising=False)
  yield jax
  jax.config.update("jax_compilation_cache_dir", before)
  compilation._EXECUTABLES[:] = stored


def test_the_default_cache_is_the_users_cache_directory(no_cache_yet, tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  expected = str(tmp_path / "xdg" / "bpref" / "xla")
  assert compilation.default_cache_dir() == expected
  assert compilation.use_cache() is None  # the library alone turns nothing on
  assert compilation.use_cache(default=True) == expected
  assert no_cache_yet.config.jax_compilation_cache_dir == expected
  assert compilation.use_cache(default=True) == expected  # a second call keeps it


def test_the_environment_names_or_refuses_the_cache(no_cache_yet, tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  monkeypatch.setenv(compilation.ENV_CACHE_DIR, str(tmp_path / "mine"))
  assert compilation.default_cache_dir() == str(tmp_path / "mine")
  monkeypatch.setenv(compilation.ENV_NO_CACHE, "1")
  assert compilation.default_cache_dir() is None
  assert compilation.use_cache(default=True) is None
  assert no_cache_yet.config.jax_compilation_cache_dir is None


def test_an_unwritable_default_cache_degrades_to_none_with_one_line(no_cache_yet, tmp_path,
                                                                     monkeypatch, capsys):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
  assert compilation.use_cache(default=True) is None
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "no compilation cache" in err and "cannot be created" in err
  assert no_cache_yet.config.jax_compilation_cache_dir is None
  with pytest.raises(ValueError, match="cannot be created"):  # a directory named is an error
    compilation.use_cache(str(blocker / "sub"))


# ---------------------------------------------------------------- whole executables

@pytest.fixture
def store(monkeypatch, tmp_path):
  """The executable store of ``compilation.jit`` on, in a directory of this test's own."""
  monkeypatch.setattr(compilation, "_EXECUTABLES", [str(tmp_path / "executables")])
  return tmp_path / "executables"


def _doubler(traced):
  def double(v, k, *, offset):
    traced.append(v.shape)
    return v * int(k) + offset
  return double


def test_a_stored_executable_answers_without_tracing(store):
  import jax.numpy as jnp

  traced = []
  first = compilation.jit(_doubler(traced), static_argnums=1, key="tests.double")
  v = np.arange(3.0)
  with compilation.count() as seen:
    out = first(v, 2, offset=0.5)
  assert traced == [(3,)] and seen.compilations == 1 and seen.cache_hits == 0
  assert len(list(store.iterdir())) == 1
  again = compilation.jit(_doubler(traced), static_argnums=1, key="tests.double")  # as a new process
  with compilation.count() as seen:
    same = again(v, 2, offset=0.5)
  assert traced == [(3,)]  # loaded, not traced
  assert seen.compilations == 1 and seen.cache_hits == 1
  np.testing.assert_array_equal(np.asarray(same), [0.5, 2.5, 4.5])
  np.testing.assert_array_equal(np.asarray(out), np.asarray(same))
  # another static value, another shape, another dtype: each a program of its own
  np.testing.assert_array_equal(np.asarray(again(v, 3, offset=0.5)), [0.5, 3.5, 6.5])
  np.testing.assert_array_equal(np.asarray(again(np.arange(4.0), 2, offset=0.5)),
                                [0.5, 2.5, 4.5, 6.5])
  assert again(jnp.arange(3.0, dtype=jnp.float32), 2, offset=0.5).dtype == jnp.float32
  assert len(traced) == 4 and len(list(store.iterdir())) == 4
  weak, strong = jnp.asarray(1.5), jnp.asarray(1.5, dtype=jnp.float64)  # one value, two types
  assert weak.weak_type and not strong.weak_type
  assert float(again(weak, 2, offset=0.5)) == float(again(strong, 2, offset=0.5)) == 3.5
  assert again(weak, 2, offset=0.5).weak_type and not again(strong, 2, offset=0.5).weak_type
  assert len(traced) == 6


def test_a_stored_executable_is_keyed_by_bprefs_source(store, monkeypatch):
  traced = []
  compilation.jit(_doubler(traced), static_argnums=1, key="tests.double")(np.ones(2), 2, offset=0.0)
  monkeypatch.setattr(compilation, "_environment", lambda: "another version of bpref")
  compilation.jit(_doubler(traced), static_argnums=1, key="tests.double")(np.ones(2), 2, offset=0.0)
  assert len(traced) == 2 and len(list(store.iterdir())) == 2


def test_a_damaged_store_is_compiled_again(store):
  traced = []
  compilation.jit(_doubler(traced), static_argnums=1, key="tests.double")(np.ones(2), 2, offset=1.0)
  for entry in store.iterdir():
    entry.write_bytes(b"not an executable")
  out = compilation.jit(_doubler(traced), static_argnums=1, key="tests.double")(
      np.ones(2), 2, offset=1.0)
  np.testing.assert_array_equal(np.asarray(out), [3.0, 3.0])
  assert len(traced) == 2


def test_a_stored_executable_that_fails_to_run_is_compiled_again_and_never_stored_again(
    store, monkeypatch):
  traced = []
  compilation.jit(_doubler(traced), static_argnums=1, key="tests.double")(np.ones(2), 2, offset=1.0)
  (entry,) = store.iterdir()
  load = compilation._load

  def broken(*args, **kwargs):
    raise RuntimeError("NOT_FOUND: Function fusion not found")  # as an incomplete executable

  monkeypatch.setattr(compilation, "_load", lambda signature: load(signature) and broken)
  double = compilation.jit(_doubler(traced), static_argnums=1, key="tests.double")  # a new process
  assert np.asarray(double(np.ones(2), 2, offset=1.0)).tolist() == [3.0, 3.0]
  assert np.asarray(double(np.ones(2), 2, offset=1.0)).tolist() == [3.0, 3.0]
  assert len(traced) == 2  # compiled again once, then kept in this process
  monkeypatch.setattr(compilation, "_load", load)
  later = compilation.jit(_doubler(traced), static_argnums=1, key="tests.double")  # a later one
  assert np.asarray(later(np.ones(2), 2, offset=1.0)).tolist() == [3.0, 3.0]
  assert len(traced) == 3  # refused: neither loaded nor stored again
  assert [p.name for p in store.iterdir()] == [entry.name]
  assert pickle.loads(entry.read_bytes())[1] is None


def test_what_is_stored_is_compiled_afresh_not_read_back_from_jaxs_cache(store):
  # An executable that JAX's persistent cache gave back cannot be serialized whole on XLA's CPU
  # backend ("NOT_FOUND: Function wrapped_clamp not found" once read back): the store compiles
  # its own, even when JAX's cache holds the program.
  import jax
  import jax.numpy as jnp

  assert jax.config.jax_compilation_cache_dir  # the suite's cache (conftest.py)

  def clipped(v, i):
    return jax.lax.switch(i, (jnp.tanh, lambda v: jnp.clip(v, -1.0, 1.0)), v).sum()

  v = np.linspace(-2.0, 2.0, 64)
  jax.jit(clipped)(v, np.int32(1)).block_until_ready()  # into JAX's cache
  jax.clear_caches()  # the next compilation of the same program reads JAX's cache
  expected = [float(jax.jit(clipped)(v, np.int32(i))) for i in range(2)]
  jax.clear_caches()
  compilation.jit(clipped, key="tests.clipped")(v, np.int32(0))
  assert store.exists() and len(list(store.iterdir())) == 1  # stored
  traced = []
  again = compilation.jit(lambda v, i: traced.append(1) or clipped(v, i), key="tests.clipped")
  assert [float(again(v, np.int32(i))) for i in range(2)] == expected
  assert not traced  # read back from the store, and it runs


def test_threads_compile_stored_programs_at_once_and_the_rest_still_reads_jaxs_cache(store):
  """``_compile`` answers "no cache" to its own thread only: two threads store their programs
  at once, and a compilation in another thread meanwhile is a hit of JAX's cache."""
  import threading

  import jax
  import jax.numpy as jnp
  from jax._src import compilation_cache

  def program(v, k):
    return jnp.tanh(v * k).sum()

  v = np.linspace(-1.0, 1.0, 32)
  jax.jit(program, static_argnums=1)(v, 5).block_until_ready()  # into JAX's cache
  jax.clear_caches()
  answers, started = {}, threading.Barrier(3)

  def stored(k):
    started.wait()
    answers[k] = float(compilation.jit(program, static_argnums=1, key="tests.program")(v, k))

  def plain():
    started.wait()
    with compilation.count() as seen:
      answers[5] = float(jax.jit(program, static_argnums=1)(v, 5))
    answers["plain"] = seen.cache_hits

  threads = [threading.Thread(target=stored, args=(k,)) for k in (2, 3)]
  threads.append(threading.Thread(target=plain))
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert len(list(store.iterdir())) == 2  # both copies ran
  for k in (2, 3, 5):
    assert answers[k] == pytest.approx(float(np.tanh(v * k).sum()), rel=1e-12)
  assert answers["plain"] >= 1  # JAX's cache was on for that thread
  backend = jax.devices()[0].client
  assert compilation_cache.is_cache_used(backend)  # as JAX answers, outside the store's compile


def test_traced_arguments_and_unstable_statics_go_through_jax_jit(store):
  import jax

  traced = []
  double = compilation.jit(_doubler(traced), static_argnums=1, key="tests.double")
  out = jax.vmap(lambda v: double(v, 2, offset=0.0))(np.arange(6.0).reshape(3, 2))
  np.testing.assert_array_equal(np.asarray(out), np.arange(6.0).reshape(3, 2) * 2)
  assert not store.exists() or not any(store.iterdir())

  class Two:  # a static argument whose repr names an address: never a key
    __int__ = lambda self: 2  # noqa: E731
  np.testing.assert_array_equal(np.asarray(double(np.ones(2), Two(), offset=0.0)), [2.0, 2.0])
  assert not store.exists() or not any(store.iterdir())
  assert len(traced) == 2
  with pytest.raises(ValueError, match="needs a key"):
    compilation.jit(lambda v: v)


def test_an_unwritable_store_turns_itself_off_with_one_line(monkeypatch, tmp_path, capsys):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  monkeypatch.setattr(compilation, "_EXECUTABLES", [str(blocker / "executables")])
  out = compilation.jit(_doubler([]), static_argnums=1, key="tests.double")(np.ones(2), 2, offset=0.0)
  np.testing.assert_array_equal(np.asarray(out), [2.0, 2.0])
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "executables are not kept" in err
  assert compilation._EXECUTABLES == []


def test_prune_removes_the_least_recently_used_executables_past_the_limit(tmp_path, monkeypatch):
  now = 1_700_000_000.0
  ages = {"old.exe": 300, "middle.exe": 200, "new.exe": 100, ".partial-dead": 7200,
          ".partial-live": 10}  # seconds since last used or written
  for name, age in ages.items():
    (tmp_path / name).write_bytes(b"x" * 100)
    os.utime(tmp_path / name, (now - age, now - age))
  (tmp_path / "notes.txt").write_bytes(b"y" * 1000)  # not an executable: left alone
  monkeypatch.setattr(compilation.time, "time", lambda: now)
  compilation.prune(str(tmp_path), limit=250)
  assert sorted(os.listdir(tmp_path)) == [".partial-live", "middle.exe", "new.exe", "notes.txt"]
  compilation.prune(str(tmp_path / "absent"))  # nothing to prune: no error


def test_a_loaded_executable_is_marked_used(store):
  traced = []
  compilation.jit(_doubler(traced), static_argnums=1, key="tests.double")(np.ones(2), 2, offset=0.0)
  [entry] = store.iterdir()
  os.utime(entry, (1.0, 1.0))
  compilation.jit(_doubler(traced), static_argnums=1, key="tests.double")(np.ones(2), 2, offset=0.0)
  assert len(traced) == 1 and entry.stat().st_mtime > 1.0


_NO_SUCH_OPTION = (("xla_cpu_no_such_option", True),)


@pytest.mark.parametrize("stored", [False, True], ids=["plain", "stored"])
def test_cpu_options_reach_xla_on_a_cpu_and_only_there(stored, monkeypatch, tmp_path):
  """An option XLA does not know is refused by XLA, so it reached XLA, whether the store
  compiles the program or ``jax.jit`` does; the program then compiles with XLA's defaults (an
  older XLA without the witnesses' option still runs them). A program for another platform
  leaves the options out."""
  monkeypatch.setattr(compilation, "_EXECUTABLES", [str(tmp_path)] if stored else [])
  monkeypatch.setattr(compilation, "_REFUSED", set())
  monkeypatch.setattr(compilation, "_on_cpu", lambda: False)
  out = compilation.jit(_doubler([]), static_argnums=1, key="tests.double",
                        cpu_options=_NO_SUCH_OPTION)(np.ones(2), 2, offset=0.0)
  np.testing.assert_array_equal(np.asarray(out), [2.0, 2.0])
  assert compilation._REFUSED == set()  # never given to XLA
  monkeypatch.setattr(compilation, "_on_cpu", lambda: True)
  out = compilation.jit(_doubler([]), static_argnums=1, key="tests.double",
                        cpu_options=_NO_SUCH_OPTION)(np.ones(2), 3, offset=0.0)
  np.testing.assert_array_equal(np.asarray(out), [3.0, 3.0])
  assert compilation._REFUSED == {_NO_SUCH_OPTION}
  compilation.jit(_doubler([]), static_argnums=1, key="tests.double",
                  cpu_options=compilation.ELEMENTAL_EMITTERS)(np.ones(2), 2, offset=0.0)
  assert compilation._REFUSED == {_NO_SUCH_OPTION}  # this XLA knows the witnesses' option


def test_a_stored_executable_is_keyed_by_its_cpu_options(store):
  traced = []
  compilation.jit(_doubler(traced), static_argnums=1, key="tests.double",
                  cpu_options=compilation.ELEMENTAL_EMITTERS)(np.ones(2), 2, offset=0.0)
  compilation.jit(_doubler(traced), static_argnums=1, key="tests.double")(np.ones(2), 2, offset=0.0)
  assert len(traced) == 2 and len(list(store.iterdir())) == 2


def test_which_programs_compile_through_the_elemental_emitters():
  """The programs compiled once for many cases take ``compilation.ELEMENTAL_EMITTERS``; bpref's
  public functions compile as in a user's code (each witness program is checked right on a
  network where a miscompile showed: tests/test_verify.py)."""
  from bpref import tables
  from bpref.oracle import truth
  from bpref.scale import fast
  from bpref.tools import verify
  from bpref.witnesses import autodiff, finite_diff

  many = [autodiff._padded_many, autodiff._padded_grads, finite_diff.gradient,
          finite_diff._estimates_padded, verify._witness_outputs, fast._many, fast._many_lambdas,
          truth._loss_terms_table(("squared_error",))]
  many += [apply for apply, _ in tables._tables(("tanh",)).values()]
  assert all(program.cpu_options == compilation.ELEMENTAL_EMITTERS for program in many)
  assert compilation.ELEMENTAL_EMITTERS
  assert verify._bpref_outputs.cpu_options == ()


def _twice_at_once(call):
  """``call()`` in two threads started together: what ``compilation.count`` saw, the results."""
  import threading

  out = [None, None]

  def one(i):
    out[i] = np.asarray(call())

  with compilation.count() as seen:
    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for thread in threads:
      thread.start()
    for thread in threads:
      thread.join()
  return seen, out


def test_threads_that_call_one_program_at_once_compile_it_once(store):
  """Two threads meeting one program while it traces: the second waits for the first's
  executable instead of compiling its own (each compilation counts against a budget)."""
  import time

  traced = []

  def slow(v):
    traced.append(v.shape)
    time.sleep(0.3)  # while tracing: the other thread arrives
    return v * 2.0

  program = compilation.jit(slow, key="tests.slow")
  seen, out = _twice_at_once(lambda: program(np.arange(3.0)))
  assert seen.compilations == 1 and len(traced) == 1
  for got in out:
    np.testing.assert_array_equal(got, [0.0, 2.0, 4.0])


def test_threads_that_meet_one_stored_program_at_once_load_it_once(store, monkeypatch):
  """The race that made a cold ``verify --quick`` count 25 compilations against its 20
  programs: two threads reading one stored executable each loaded it (and each load counts
  as a compilation the cache answered); the second now waits for the first's."""
  import time

  traced = []
  compilation.jit(_doubler(traced), static_argnums=1, key="tests.double")(np.ones(2), 2, offset=0.0)
  load = compilation._load

  def slow_load(signature):
    time.sleep(0.3)  # while reading: the other thread arrives
    return load(signature)

  monkeypatch.setattr(compilation, "_load", slow_load)
  again = compilation.jit(_doubler(traced), static_argnums=1, key="tests.double")  # a new process
  seen, out = _twice_at_once(lambda: again(np.ones(2), 2, offset=0.0))
  assert (seen.compilations, seen.cache_hits) == (1, 1) and len(traced) == 1
  for got in out:
    np.testing.assert_array_equal(got, [2.0, 2.0])


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"),
                    reason="counts the memory maps that Linux lists in /proc")
def test_make_room_clears_the_compiled_programs_near_the_map_limit(store, monkeypatch, tmp_path):
  # JAX's caches are cleared for real in a process of their own (tests/test_plugin.py); here
  # clear_caches is recorded, so that the later tests of this process keep their programs.
  import jax

  cleared = []
  monkeypatch.setattr(jax, "clear_caches", lambda: cleared.append(True))
  limit = tmp_path / "max_map_count"
  monkeypatch.setattr(compilation, "MAP_LIMIT", str(limit))
  monkeypatch.setattr(compilation, "_ROOM", {"checked_at": 0})
  traced = []
  ours = compilation.jit(_doubler(traced), static_argnums=1, key="tests.room")
  v = np.arange(3.0)
  ours(v, 2, offset=0.5)

  limit.write_text("1000000000\n")  # far from the limit: nothing is cleared
  assert not compilation.make_room(every=1)
  with compilation.count() as seen:
    ours(v, 2, offset=0.5)
  assert seen.compilations == 0 and traced == [(3,)] and not cleared

  limit.write_text("10\n")  # past the limit, but no compilation since the last count
  assert not compilation.make_room(every=1) and not cleared
  ours(np.arange(4.0), 2, offset=0.5)  # one compilation: the maps are counted again
  assert compilation.make_room(every=1) and cleared == [True]
  with compilation.count() as seen:
    np.testing.assert_array_equal(np.asarray(ours(v, 2, offset=0.5)), [0.5, 2.5, 4.5])
  assert traced == [(3,), (4,)]  # not traced again: its executable cleared, loaded from the store
  assert seen.compilations == seen.cache_hits == 1


def test_a_jit_that_is_dropped_frees_its_executables(store, monkeypatch):
  # make_room reaches every jit alive to clear what it holds; a jit no longer referenced
  # must still free its executables with it.
  import gc
  import weakref

  compiled = []
  real = compilation._compile
  monkeypatch.setattr(compilation, "_compile",
                      lambda *a: compiled.append(weakref.ref(out := real(*a))) or out)
  double = compilation.jit(_doubler([]), static_argnums=1, key="tests.dropped")
  double(np.arange(3.0), 2, offset=0.0)
  assert len(compiled) == 1 and compiled[0]() is not None and double in compilation._JITS
  del double
  gc.collect()
  assert compiled[0]() is None
