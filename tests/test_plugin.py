"""bpref's pytest plugin (bpref.testing.plugin), run as a user runs it: pytest in a subprocess, on
examples/ci_project (a class-based NumPy MLP with planted bugs) and on small suites written here.

The runs share the suite's compilation cache (BPREF_CACHE_DIR, conftest.py) unless a test is
about the plugin's own choice of cache; their environment has no CI variable unless a test
sets one (``bench_ci_project.environment``).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import pathlib
import re
import textwrap

import pytest

import scripts

bench = scripts.load("bench_ci_project")

BUGS = {"transposed_dW": "transposed", "db_averaged_twice": "bias_wrong",
        "ce_over_BK": "constant_factor", "tanh_prime": "activation_derivative"}
"""ci_mlp's planted bugs and the diagnosis the oracle names each by."""

ORACLE_TESTS = {
    "": set(),
    "transposed_dW": {"test_mse_backprop_matches_bpref", "test_cross_entropy_backprop_matches_bpref"},
    "db_averaged_twice": {"test_mse_backprop_matches_bpref", "test_cross_entropy_backprop_matches_bpref"},
    "ce_over_BK": {"test_cross_entropy_backprop_matches_bpref"},
    "tanh_prime": {"test_mse_backprop_matches_bpref", "test_cross_entropy_backprop_matches_bpref"},
}
"""The project's assert_backprop_correct tests that each bug fails."""

FAILURE_LINES = 45
"""Most lines pytest prints for one failed assert_backprop_correct (its section under FAILURES:
the test's line, the report once, the reproducer's path). Measured: 21 to 38 on the planted
bugs, and one line in the short summary; about 144 a failure (433 for 3), most of them in the
short summary, with the helpers as they were before the plugin, under CI=true."""

SUITE_CACHE = os.environ.get("BPREF_CACHE_DIR")


def _env(**extra):
  return bench.environment(BPREF_CACHE_DIR=SUITE_CACHE, **extra)


def _sections(output: str) -> dict:
  """{test name: the lines of its failure section} of pytest's output."""
  out, name = {}, None
  for line in output.splitlines():
    header = re.fullmatch(r"_{3,} (\S+) _{3,}", line)
    if header:
      name = header.group(1)
      out[name] = []
    elif re.match(r"(=+ short test summary|bpref: \d+ oracle checks)", line):
      name = None
    elif name is not None:
      out[name].append(line)
  return out


def _failed(output: str) -> dict:
  """{test name: its line in the short test summary}."""
  return {m.group(1): line for line in output.splitlines()
          for m in [re.match(r"FAILED \S+::(\S+)", line)] if m}


def test_the_plugin_is_a_pytest11_entry_point_of_bpref():
  points = [p for p in importlib.metadata.entry_points(group="pytest11") if p.name == "bpref"]
  assert [p.value for p in points] == ["bpref.testing.plugin"]
  assert points[0].dist.name == "bpref"


def test_the_docs_example_is_the_example_projects_code():
  """docs/ci.md's worked example is an excerpt of examples/ci_project/tests/test_mlp.py, which
  the tests below run."""
  docs = (bench.ROOT / "docs" / "ci.md").read_text()
  blocks = re.findall(r"```python\n(.*?)```", docs, re.S)
  example = next(block for block in blocks if "def grads(" in block)
  assert example in (bench.PROJECT / "tests" / "test_mlp.py").read_text()


def test_a_planted_bug_fails_in_a_few_lines_that_name_it(tmp_path):
  project = bench.copy_project(tmp_path / "project")
  run = bench.run_pytest(project, "-k", "test_mse_backprop_matches_bpref",
                         env=_env(CI="true", CI_MLP_BUG="tanh_prime"))
  assert run.returncode == 1, run.output
  section = _sections(run.output)["test_mse_backprop_matches_bpref"]
  assert len(section) <= FAILURE_LINES, "\n".join(section)
  assert "def assert_backprop_correct" not in run.output  # the helper's frame is hidden
  assert sum("diagnosis (most likely first)" in line for line in run.output.splitlines()) == 1
  assert _failed(run.output) == {"test_mse_backprop_matches_bpref": (
      "FAILED tests/test_mlp.py::test_mse_backprop_matches_bpref - AssertionError: bpref oracle "
      "[activation_derivative]: the candidate's backprop is wrong")}
  path = re.search(r"^E\s+reproducer: (\S+)$", run.output, re.M).group(1)
  assert os.path.dirname(path) == str(project / ".pytest_cache" / "d" / "bpref-reproducers")
  assert "load_target('test_mlp:grads')" in pathlib.Path(path).read_text()
  summary = run.summary
  assert (summary["checks"], summary["failed"], summary["references"]) == (1, 1, 0), run.output
  assert summary["compilations"] >= 1


def _outcome(run) -> tuple:
  return run.returncode, sorted(_failed(run.output)), re.findall(r"(\d+) passed", run.output)


@pytest.mark.deep
@pytest.mark.parametrize("bug", sorted(ORACLE_TESTS))
def test_the_project_passes_and_each_bug_fails_named_with_ci_set_or_not(bug, tmp_path):
  project = bench.copy_project(tmp_path / "project")
  runs = {ci: bench.run_pytest(project, env=_env(CI=ci, CI_MLP_BUG=bug or None))
          for ci in ("true", None)}
  assert _outcome(runs["true"]) == _outcome(runs[None])
  run = runs["true"]
  if not bug:
    assert run.returncode == 0 and "7 passed" in run.output, run.output
    return
  assert run.returncode == 1, run.output
  failed, sections = _failed(run.output), _sections(run.output)
  assert ORACLE_TESTS[bug] <= set(failed), run.output
  for name in ORACLE_TESTS[bug]:
    assert failed[name].endswith(f"bpref oracle [{BUGS[bug]}]: the candidate's backprop is wrong")
    assert len(sections[name]) <= FAILURE_LINES, "\n".join(sections[name])


def _suite(folder, conftest: str = "", tests: int = 1):
  """A small suite: ``tests`` tests that each run a check and record the run's cache folder and
  hypothesis profile in record/."""
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "conftest.py").write_text(textwrap.dedent(conftest))
  (folder / "record").mkdir()
  body = textwrap.dedent('''
      import os
      import numpy as np
      from hypothesis import settings
      from bpref import compilation
      from bpref.testing import assert_backprop_correct

      def linear(weights, biases, activations, loss, x, t):
        g = (x @ weights[0].T + biases[0][None, :] - t) / x.shape[0]
        return [g.T @ x], [g.sum(axis=0)]

      def record(name):
        profile = settings.default
        with open(os.path.join(os.path.dirname(__file__), "record", name), "w") as fh:
          fh.write(f"{compilation.cache_dir()}\\n{settings.get_current_profile_name()}\\n"
                   f"{profile.deadline}\\n{profile.derandomize}\\n")
      ''')
  for i in range(tests):
    body += textwrap.dedent(f'''
        def test_{i}():
          record("{i}")
          assert_backprop_correct(linear, activations=("identity",), losses=("half_squared_error",),
                                  max_depth=1, examples=3, seed={i})
        ''')
  (folder / "test_small.py").write_text(body)
  return folder


def _records(folder) -> list:
  return [(folder / "record" / name).read_text().split("\n")[:4]
          for name in sorted(os.listdir(folder / "record"))]


@pytest.mark.deep
def test_the_cache_lives_in_pytests_cache_folder_and_a_second_run_reads_it(tmp_path):
  suite = _suite(tmp_path / "suite")
  own = str(suite / ".pytest_cache" / "d" / "bpref-xla")
  first, second = (bench.run_pytest(suite, env=bench.environment()) for _ in range(2))
  assert first.returncode == second.returncode == 0, first.output
  assert _records(suite)[0][0] == own and os.listdir(own)
  assert first.summary["cache_hits"] == 0 < first.summary["compilations"], first.output
  assert second.summary["cache_hits"] == second.summary["compilations"] > 0, second.output
  named = tmp_path / "named"
  run = bench.run_pytest(_suite(tmp_path / "other"), env=bench.environment(BPREF_CACHE_DIR=str(named)))
  assert run.returncode == 0 and os.listdir(named), run.output
  assert not os.path.exists(tmp_path / "other" / ".pytest_cache" / "d" / "bpref-xla")
  run = bench.run_pytest(_suite(tmp_path / "none"), env=bench.environment(BPREF_NO_CACHE="1"))
  assert run.returncode == 0 and "(no persistent cache)" in run.output, run.output
  assert _records(tmp_path / "none")[0][0] == "None"


@pytest.mark.deep
def test_xdist_workers_share_one_cache_and_the_summary_adds_up_their_counts(tmp_path):
  suite = _suite(tmp_path / "suite", tests=4)
  run = bench.run_pytest(suite, "-n", "2", env=bench.environment())
  assert run.returncode == 0, run.output
  assert {record[0] for record in _records(suite)} == {str(suite / ".pytest_cache" / "d" / "bpref-xla")}
  assert run.summary["checks"] == 4 and run.summary["compilations"] >= 1, run.output


@pytest.mark.deep
def test_one_hypothesis_profile_with_ci_set_or_not_unless_the_run_chose_one(tmp_path):
  for ci in (None, "true", "false"):
    suite = _suite(tmp_path / f"ci-{ci}")
    run = bench.run_pytest(suite, env=_env(CI=ci))
    assert run.returncode == 0, run.output
    assert _records(suite)[0][1:] == ["bpref", "None", "True"], (ci, _records(suite))
  mine = _suite(tmp_path / "mine", conftest='''
      from hypothesis import settings
      settings.register_profile("mine", max_examples=7)
      settings.load_profile("mine")
      ''')
  assert bench.run_pytest(mine, env=_env()).returncode == 0
  assert _records(mine)[0][1:] == ["mine", "0:00:00.200000", "False"]  # as the conftest left it
  chosen = _suite(tmp_path / "chosen")
  assert bench.run_pytest(chosen, "--hypothesis-profile=default", env=_env()).returncode == 0
  assert _records(chosen)[0][1] == "default"


@pytest.mark.deep
def test_without_the_plugin_nothing_of_it_happens(tmp_path):
  suite = _suite(tmp_path / "suite")
  run = bench.run_pytest(suite, "-p", "no:bpref", env=bench.environment())
  assert run.returncode == 0, run.output
  assert "bpref:" not in run.output
  assert not os.path.exists(suite / ".pytest_cache" / "d" / "bpref-xla")
  assert _records(suite)[0][1] == "default"  # hypothesis's own profile, CI unset


@pytest.mark.deep
def test_a_process_near_the_map_limit_has_its_programs_cleared_between_tests_and_examples(tmp_path):
  suite = tmp_path / "suite"
  suite.mkdir()
  (suite / "test_room.py").write_text(textwrap.dedent('''
      import jax, numpy as np
      from hypothesis import given, settings, strategies as st
      from bpref import compilation

      triple = jax.jit(lambda v: v * 3)

      def test_compiles_near_the_limit(tmp_path):
        limit = tmp_path / "max_map_count"
        limit.write_text("10\\n")  # any process is past 3/4 of this limit
        compilation.MAP_LIMIT = str(limit)
        compilation._ROOM["checked_at"] = -1000  # as after many compilations
        triple(np.arange(3.0))
        assert triple._cache_size() == 1

      def test_the_next_test_finds_the_programs_cleared():
        assert triple._cache_size() == 0

      @settings(max_examples=4, database=None)
      @given(st.integers(0, 3))
      def test_each_example_finds_them_cleared(k):
        assert triple._cache_size() == 0
        compilation._ROOM["checked_at"] = -1000
        triple(np.arange(3.0) + k)
      '''))
  run = bench.run_pytest(suite, "-p", "no:randomly", env=_env())
  assert run.returncode == 0, run.output
  run = bench.run_pytest(suite, "-p", "no:randomly", "-p", "no:bpref", env=bench.environment())
  assert run.returncode == 1 and "2 failed, 1 passed" in run.output, run.output


@pytest.mark.deep
def test_a_run_after_one_whose_checks_used_the_worker_starts_it_early_with_its_packages(tmp_path):
  """The first run records the installed packages its worker imported; the second run's worker
  has them before it imports the test module; a run with no check removes the record."""
  suite = tmp_path / "suite"
  (suite / "record").mkdir(parents=True)
  (suite / "test_early.py").write_text(textwrap.dedent('''
      import os, sys
      HERE = os.path.join(os.path.dirname(__file__), "record")
      with open(os.path.join(HERE, f"import-{os.getpid()}"), "w") as fh:
        fh.write(str("hypothesis" in sys.modules))  # before this module imports it
      import hypothesis
      from bpref.testing import assert_backprop_correct

      def linear(weights, biases, activations, loss, x, t):
        open(os.path.join(HERE, f"candidate-{os.getpid()}"), "w").close()
        g = (x @ weights[0].T + biases[0][None, :] - t) / x.shape[0]
        return [g.T @ x], [g.sum(axis=0)]

      def test_linear():
        assert_backprop_correct(linear, activations=("identity",), losses=("half_squared_error",),
                                max_depth=1, examples=3)
      '''))
  record = suite / ".pytest_cache" / "d" / "bpref-xla" / "worker-preload.json"

  def run_and_read_the_workers_import(*args):
    for name in os.listdir(suite / "record"):
      os.remove(suite / "record" / name)
    run = bench.run_pytest(suite, *args, env=bench.environment())
    pids = [name.split("-")[1] for name in os.listdir(suite / "record") if name.startswith("candidate-")]
    return run, [(suite / "record" / f"import-{pid}").read_text() for pid in pids]

  first, seen = run_and_read_the_workers_import()
  assert first.returncode == 0 and seen == ["False"], first.output
  saved = json.loads(record.read_text())
  assert "hypothesis" in saved["modules"] and "test_early" not in saved["modules"]
  second, seen = run_and_read_the_workers_import()
  assert second.returncode == 0 and seen == ["True"], second.output
  listed, seen = run_and_read_the_workers_import("--collect-only")
  assert listed.returncode == 0 and seen == [] and record.exists(), listed.output
  none, seen = run_and_read_the_workers_import("-k", "no_such_test")
  assert none.returncode == 5 and seen == [] and not record.exists(), none.output
