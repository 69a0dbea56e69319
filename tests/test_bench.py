"""``bpref bench`` on a tiny configuration: the output's structure and its FLOP accounting.

Timings are reported, never asserted.
"""

import json

import jax
import jax.numpy as jnp
import pytest

import scripts
from bpref.tools import bench


def test_dot_flops_counts_two_m_n_k_per_matmul():
  f = jax.jit(lambda a, b, c: (a @ b) @ c)
  args = (jnp.ones((3, 4)), jnp.ones((4, 5)), jnp.ones((5, 7)))
  assert bench.dot_flops(f.lower(*args).compile().as_text()) == 2 * 3 * 5 * 4 + 2 * 3 * 7 * 5


def test_minimum_flops_by_hand():
  # sizes (2, 3, 1), B = 4: P = 3*2 + 1*3 = 9; forward 2BP = 72; backward 2B(2P - n1 n0) = 8 * 12 = 96.
  assert bench.minimum_flops((2, 3, 1), 4) == 72 + 96


def test_random_architectures_stay_in_the_stated_ranges():
  import numpy as np
  rng = np.random.default_rng(0)
  for _ in range(50):
    case = bench.random_architecture(rng)
    sizes = [case.x.shape[1]] + [p.W.shape[0] for p in case.params]
    assert 1 <= len(case.params) <= 5 and all(1 <= n <= 8 for n in sizes)
    assert 1 <= case.x.shape[0] <= 4


def test_bench_json_structure(capsys, tmp_path):
  png = tmp_path / "ratios.png"
  code = bench.main(["--cells", "tiny", "--activations", "tanh,relu", "--dtypes", "float32",
                     "--repeats", "1", "--arch-cases", "20", "--arch-budget", "0.01", "--json",
                     "--plot", str(png)])
  assert code == 0
  result = json.loads(capsys.readouterr().out)
  rows = result["grid"]
  assert [(r["cell"], r["activation"], r["dtype"]) for r in rows] == [
      ("tiny", "tanh", "float32"), ("tiny", "relu", "float32")]
  for r in rows:
    assert r["ratio"] == pytest.approx(r["seconds_bpref"] / r["seconds_jax"])
    assert r["seconds_bpref"] > 0 and r["seconds_jax"] > 0 and r["gflops_matmul"] > 0
    assert r["fraction_of_matmul"] == pytest.approx(r["gflops_bpref"] / r["gflops_matmul"])
    # bpref's matmuls are exactly the minimum: no delta_0 W_1 for an input gradient nobody asked for.
    assert r["dot_flops_bpref"] == r["dot_flops_minimum"] == bench.minimum_flops((16,) * 4, 8)
    assert r["dot_flops_forward"] == 2 * 8 * 3 * 16 * 16
    assert r["flops_bpref"] >= r["dot_flops_bpref"] and r["temp_bytes_bpref"] >= 0
  assert set(result["summary"]) >= {"ratio_geomean", "ratio_max", "cells_temp_not_above_jax"}
  assert result["summary"]["cells"] == 2
  table = bench.markdown_table(result).splitlines()  # docs/performance.md's table, from this run
  assert [line.split(" | ")[:3] for line in table[2:4]] == [["| tiny", "tanh", "32"], ["| tiny", "relu", "32"]]
  assert [line.split(" | ")[5] for line in table[2:4]] == [f"{r['ratio']:.2f}" for r in rows]
  arch = result["architectures"]
  assert table[-1].startswith(f"Random architectures a second ({arch['cases']} cases, ")
  assert f"`bpref.scale.fast` {arch['fast']['per_second']:.0f} (" in table[-1]
  assert arch["fast"]["cases"] == 20 and arch["fast"]["compiled_functions"] >= 1
  assert arch["jit_per_architecture"]["cases"] >= 2 and arch["eager"]["cases"] >= 2
  if bench._has_matplotlib():
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_rejects_unknown_cell():
  with pytest.raises(SystemExit):
    bench.main(["--cells", "huge"])


def test_checkers_runs_each_checker_on_the_same_network(capsys):
  # Each checker runs in its own fresh process; the textbook candidate passes bpref's checks,
  # and the default oracle check reports its compilations and both of its runs.
  assert bench.main(["--checkers", "--json"]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["bpref_one_network"]["passed"] is True and out["bpref_one_network"]["seconds"] > 0
  assert out["jax_check_grads"]["passed"] is True
  assert out["torch_gradcheck"].get("passed") is True or "skipped" in out["torch_gradcheck"]
  check = out["bpref_default_check"]
  assert check["passed"] is True and check["compilations"] >= 1
  for phase in ("cold", "warm"):
    assert check[phase]["calls"] >= 40 and check[phase]["calls_per_second"] > 0
  # docs/performance.md's block of these figures, rendered from this run
  rows = scripts.load("figures").FIGURES["checkers"].render([json.dumps(out)]).splitlines()
  assert f"| {check['compilations']} | cold {check['cold']['seconds']:.2f} s ({check['cold']['calls']} " in rows[2]
  assert rows[3].endswith(f"| {out['bpref_one_network']['compilations']} | "
                          f"{out['bpref_one_network']['seconds']:.2f} s |")


@pytest.mark.deep
def test_bench_ops_runs_a_passing_search_per_kind_with_its_compilations():
  from bpref.tools.bench import bench_ops

  rows = bench_ops(("dense", "attention"), "float64")
  assert [r["kind"] for r in rows] == ["dense", "attention"]
  for r in rows:
    assert r["cold"]["verdict"] == r["warm"]["verdict"] == "pass"
    assert r["warm"]["cases"] >= 40 and r["warm"]["compilations"] == 0
