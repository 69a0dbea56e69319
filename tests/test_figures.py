"""scripts/figures.py: every block of measured figures in README.md and docs/ has the command
that regenerates it, and regenerating one block changes nothing else."""

import json

import pytest

import scripts

figures = scripts.load("figures")


def test_every_block_in_the_documents_has_its_command_and_every_command_its_block():
  found = {path.name: figures.blocks(path.read_text()) for path in figures.documents()}
  assert "README.md" in found
  named = [name for names in found.values() for name in names]
  assert set(named) <= set(figures.FIGURES), sorted(set(named) - set(figures.FIGURES))
  assert set(figures.FIGURES) <= set(named), sorted(set(figures.FIGURES) - set(named))


def test_a_marker_without_its_partner_is_refused():
  with pytest.raises(ValueError, match="unbalanced figure markers: 0 blocks, 1 opening and 0 closing"):
    figures.blocks("text\n<!-- figures: bench -->\n| a |\n")
  with pytest.raises(ValueError, match="1 blocks, 1 opening and 2 closing"):
    figures.blocks("<!-- figures: bench -->\n| a |\n<!-- /figures -->\n<!-- /figures -->\n")


def test_replacing_one_block_changes_only_its_body():
  text = ("intro 1.0\n<!-- figures: bench -->\nold table\n<!-- /figures -->\nmiddle 2.0\n"
          "<!-- figures: train -->\nold train\n<!-- /figures -->\nend\n")
  assert figures.replace(text, {}) == text
  new = figures.replace(text, {"bench": "| new | table |\n| 1 | 2 |"})
  assert new == text.replace("old table\n", "| new | table |\n| 1 | 2 |\n")
  assert figures.blocks(new) == ["bench", "train"]


def test_the_train_blocks_read_the_runs_json():
  runs = []
  for extra, gap in zip(figures.TRAIN_RUNS, (5.02e-16, 2.61e-7, 4.4e-16, 8.4e-16, 4.2e-16)):
    dtype = "float32" if "float32" in extra else "float64"
    runs.append(json.dumps({"config": {"dataset": "digits", "optimizer": "adam", "activations": ["tanh", "identity"],
                                       "steps": 300, "dtype": dtype},
                            "max_rel_diff": gap, "tolerance": 3e-3 if dtype == "float32" else 3e-10}))
  table = figures.FIGURES["train"].render(runs).splitlines()
  assert table[2] == "| `bpref train` (digits, adam, tanh, 300 steps, float64) | 5.0e-16 | 3e-10 |"
  assert table[3] == "| `bpref train --dtype float32` (digits, adam, tanh, 300 steps, float32) | 2.6e-7 | 3e-3 |"
  assert len(table) == 2 + len(figures.TRAIN_RUNS)
  sentence = figures.FIGURES["train-sentence"].render(runs[:2])
  assert "differ by 5.0e-16 relative at most in float64 (2.6e-7 in float32)" in sentence


def test_the_sharding_blocks_read_the_childrens_reports():
  def record(problem, fn, mesh, shape, error):
    return {"problem": problem, "fn": fn, "mesh": mesh, "mesh_shape": shape, "error": error}

  reports = []
  for k, worst in zip(figures.SHARDING_DEVICES, (1.1e-15, 8.0e-16)):
    reports.append(json.dumps({"devices": k, "records": [
        record("regression", "value_and_grad", "data", {"data": k}, 6.6e-16),
        record("classifier", "value_and_grad", "data", {"data": k}, 2.5e-16),
        record("regression", "lambdas", "data", {"data": k}, 0.0),
        record("regression", "value_and_grad", "data+model", {"data": 2, "model": k // 2}, worst)]}))
  table = figures.FIGURES["sharding"].render(["progress line\n" + r for r in reports]).splitlines()
  assert table[0] == "| devices | mesh | " + " | ".join(figures.SHARDING_FUNCTIONS) + " |"
  assert table[2] == "| 4 | data 4 | 6.6e-16 / 2.5e-16 |  | 0 |  |  |"
  assert table[3] == "| 4 | data 2 × model 2 | 1.1e-15 |  |  |  |  |"
  assert table[5] == "| 8 | data 2 × model 4 | 8.0e-16 |  |  |  |  |"
  assert table[-1].endswith("The worst error is 1.1e-15, about 10 units of 2⁻⁵³.")  # 1.1e-15 / 2^-53 = 9.9
  assert figures.shell(figures.FIGURES["sharding"].commands[0]) == (
      "XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu python tests/test_sharding.py --child")
  assert figures.shell(figures.FIGURES["bench"].commands[0]).startswith("bpref bench ")
  sentence = figures.FIGURES["sharding-sentence"].render(reports)
  assert sentence.startswith("**Sharded** value_and_grad on 4 and 8 simulated devices equals unsharded to 1.1e-15")
