"""A verdict counts what it checked: the op oracle (``check_op``) passes only once it has checked
as many cases as it asked for (its probes and ``examples`` random cases). A case that checks
nothing is skipped, counted per reason and made up for by further draws; when the draw budget
runs out first, the verdict is an error that says how many were checked and skipped, and why.
(The network oracle's counterparts are in tests/test_oracle.py.)"""

from __future__ import annotations

import json
import os

import numpy as np

from bpref.oracle import cli
from bpref.oracle.ops import check_op

HERE = os.path.dirname(os.path.abspath(__file__))


def relu_backward(z, dout):
  return dout * (z > 0)


def softmax_backward(z, dout):
  """Correct at every width: dz = y * (dout - <dout, y>)."""
  e = np.exp(z - z.max(axis=1, keepdims=True))
  y = e / e.sum(axis=1, keepdims=True)
  return y * (dout - (dout * y).sum(axis=1, keepdims=True))


def test_op_cases_that_check_nothing_are_skipped_counted_and_made_up():
  report = check_op("activation", relu_backward, name="relu")  # z <= 0 everywhere: dz = 0
  assert report.verdict == "pass", report.text()
  assert report.requested > 40 and report.cases == report.requested  # probes + 40 examples
  assert report.skipped > 0 and report.dropped == {"vacuous": report.skipped}
  head, _, rest = report.text().partition("\n")
  assert f"on all {report.cases} cases ({report.skipped} cases that check nothing skipped" in head
  assert f"skipped unchecked: {report.skipped} vacuous" in rest, rest
  data = json.loads(report.json())
  assert data["checked"] == report.cases and data["requested"] == report.requested
  assert data["skipped"] == report.skipped and data["dropped"] == {"vacuous": report.skipped}


def test_an_op_search_short_of_cases_is_an_error():
  # a softmax of one unit has a zero Jacobian: with max_width 1 no random case checks anything
  report = check_op("softmax", softmax_backward, max_width=1)
  assert report.verdict == "error" and not report.passed and report.kind == "too_few_cases"
  assert 0 < report.cases < report.requested
  assert report.skipped >= 400 and report.dropped == {"vacuous": report.skipped}  # 10 per example
  assert f"only {report.cases} of the {report.requested} cases" in report.message
  assert f"skipped unchecked: {report.skipped} ({report.skipped} vacuous" in report.message
  assert report.text().startswith("ERROR (softmax") and "PASS" not in report.text()


def test_an_op_search_short_of_cases_exits_2(tmp_path, capsys):
  path = tmp_path / "mine.py"
  path.write_text("import sys\nsys.path.insert(0, %r)\nfrom test_counts import softmax_backward\n"
                  % HERE)
  code = cli.main(["--op", "softmax", "--function", f"{path}:softmax_backward", "--max-width", "1",
                   "--in-process"])
  out = capsys.readouterr()
  assert code == 2, out
  assert "no verdict" in out.out + out.err and "PASS" not in out.out, out
