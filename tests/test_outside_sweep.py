"""scripts/outside_sweep.py: the suite's right candidates and planted bugs at other seeds."""

import json

import pytest

import scripts

sweep = scripts.load("outside_sweep")


def test_planted_bugs_are_named_at_another_seed(tmp_path):
  import test_ops_layernorm as LN
  import test_ops_pool as P

  out = tmp_path / "bugs.jsonl"
  with open(out, "w") as f:
    summary = sweep.run("bugs", range(11, 12), 20, ("float64",), only=("avgpool2d", "layernorm"),
                        out=f)
  records = [json.loads(line) for line in out.read_text().splitlines()]
  assert summary["misses"] == 0, summary
  assert summary["checks"] == len(records) == len(LN.BUGS) + len(P.AVG_BUGS), summary
  assert all(r["verdict"] == "fail" and r["codes"] for r in records)


def test_a_right_candidate_counted_as_a_bug_is_a_miss_and_exits_1(monkeypatch, capsys):
  """The sweep's verdict can fail: a planted bug that passes is reported, with its report."""
  pytest.importorskip("torch")
  import test_ops_pool as P
  from bpref.oracle.ops import check_op

  monkeypatch.setattr(sweep, "_bugs", lambda: [("avgpool2d/none", {"scale_missing"}, lambda **o: check_op(
      "avgpool2d", P.avg_loops(2, 2), "p2s2", **o))])
  assert sweep.main(["--what", "bugs", "--seeds", "0:1", "--dtypes", "float64"]) == 1
  out = capsys.readouterr().out
  assert "MISS avgpool2d/none float64 seed 0" in out and "PASS" in out and '"misses": 1' in out


def test_the_jobs_of_a_missing_framework_are_skipped_and_counted(monkeypatch, capsys):
  monkeypatch.setattr(sweep, "_available", lambda module: module != "torch")
  summary = sweep.run("right", range(1), 3, ("float64",), only=("avgpool2d",))
  import test_ops_pool as P

  torch_ways = [w for w in P.RIGHT_AVG if w.startswith("torch")]
  assert summary["skipped"] == 5 * len(torch_ways), summary  # five windows each
  assert summary["checks"] == 5 * (len(P.RIGHT_AVG) - len(torch_ways)) and summary["misses"] == 0
  assert "skipped, their framework not installed: avgpool2d/torch" in capsys.readouterr().out
