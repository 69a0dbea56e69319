"""The op kinds are records: each has every part the engine asks for, and the engine asks them.

``test_every_kind_has_every_part`` is the list of what a new kind still lacks; the AST test
keeps the engine from branching on a kind's name, so that adding a kind touches its record and
``bpref.oracle.ops.kinds.RECORDS`` alone.
"""

import ast
import pathlib

import numpy as np
import pytest

from bpref.oracle.ops import kinds
from bpref.oracle.ops.record import FAMILIES, Label, OpKind, finite

OPS = pathlib.Path(kinds.__file__).parent

ENGINE = ("__init__.py", "_search.py", "_judge.py", "_diagnosis.py", "adapters.py", "cli.py",
          "kinds.py", "record.py")
"""The modules that serve every kind: none of them may name one."""

FACTORS_ONLY = ("loss",)
"""Kinds whose first name's bugs are found by refitting a constant factor (squared_error's 2,
1/B, 1/K) rather than by a bug model."""

REQUIRED = ("probe_dims", "random_dims", "draw", "compute")
"""The methods a record must write itself (``OpKind`` has no default for them)."""


def _spec(record):
  name = record.names[0] if record.names else None
  if record.name == "activation":
    name = "tanh"
  return kinds.make_spec(record.name, name, examples=2)


def _missing(record) -> list:
  """What ``record`` lacks, in words."""
  out = []
  for attr in ("name", "summary", "forward_name", "takes", "layouts", "signatures"):
    if not getattr(record, attr):
      out.append(f"the attribute {attr}")
  for method in REQUIRED:
    if getattr(type(record), method) is getattr(OpKind, method):
      out.append(f"the method {method}")
  if out:
    return out
  spec = _spec(record)
  shapes, family_dims = record.probe_dims(spec)
  if not shapes or not family_dims:
    out.append("probe shapes")
  fams = record.value_families(spec)
  if not fams or not set(fams) <= set(FAMILIES) or fams[0] != "plain":
    out.append(f"value families from {FAMILIES}, plain first (has {fams})")
  checked = modelled = 0
  for dims in list(shapes)[:2] + list(family_dims)[:1]:  # a few: each shape compiles bpref's answer
    case = record.case(spec, Label(tuple(dims), "normal", 0))
    truth = record.compute(spec, case)
    if set(truth.expected) != set(record.output_names(spec)) or set(truth.bounds) != set(truth.expected):
      out.append(f"outputs {record.output_names(spec)} with a bound each (has {sorted(truth.expected)})")
      break
    if finite(truth):
      checked += 1
      modelled += bool(record.models(spec, case, truth))
  if not checked:
    out.append("a probe on which bpref's answer is finite")
  elif not modelled and record.name not in FACTORS_ONLY:
    out.append("bug models (none on any probe)")
  return out


@pytest.mark.parametrize("record", kinds.RECORDS, ids=lambda r: r.name)
def test_every_kind_has_every_part(record):
  assert _missing(record) == []


def test_the_completeness_check_names_what_a_new_kind_lacks():
  class Half(OpKind):
    name = "half"
    summary = "a kind with no cases"
    forward_name = "y = x / 2"
  assert _missing(Half()) == [f"the method {m}" for m in REQUIRED]


def test_kind_names_and_case_streams_are_distinct():
  assert len(set(kinds.KINDS)) == len(kinds.KINDS)
  numbers = [r.number() if r.name not in ("dense", "activation", "softmax", "loss", "layer")
             else None for r in kinds.RECORDS]
  numbers = [n for n in numbers if n is not None]
  assert len(set(numbers)) == len(numbers)


def _spec_kind(node) -> bool:
  """Whether ``node`` reads a spec's kind: spec.kind, ev.spec.kind, ..."""
  if not (isinstance(node, ast.Attribute) and node.attr == "kind"):
    return False
  owner = node.value
  return (isinstance(owner, ast.Name) and owner.id == "spec") or \
      (isinstance(owner, ast.Attribute) and owner.attr == "spec")


def _branches_on_a_kind(source: str) -> list:
  """'line: text' of each comparison in ``source`` that names a kind: kind == "dense", or a kind
  name in a tuple tested with ``in``."""
  names = set(kinds.KINDS)
  found = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Compare):
      consts = [c for c in [node.left, *node.comparators] for c in ast.walk(c)
                if isinstance(c, ast.Constant) and c.value in names]
      attrs = [a for a in [node.left, *node.comparators] for a in ast.walk(a) if _spec_kind(a)]
      if consts or attrs:
        found.append(f"{node.lineno}: {ast.unparse(node)}")
    if (isinstance(node, ast.Subscript) and _spec_kind(node.slice)
        and not (isinstance(node.value, ast.Name) and node.value.id == "_BY_NAME")):
      found.append(f"{node.lineno}: {ast.unparse(node)}")
  return found


def test_the_engine_never_branches_on_a_kind():
  found = {name: _branches_on_a_kind((OPS / name).read_text()) for name in ENGINE}
  assert {k: v for k, v in found.items() if v} == {}


def test_the_branch_check_sees_a_branch():
  assert _branches_on_a_kind('if spec.kind in ("dense", "layer"):\n  pass\n')
  assert _branches_on_a_kind('x = TABLE[spec.kind]\n')
  assert _branches_on_a_kind('if kind == "loss":\n  pass\n')
  assert not _branches_on_a_kind('if verdict.kind == "numeric":\n  pass\n')


def _reads_a_kind(source: str) -> list:
  """'line: text' of each comparison in ``source`` that reads a spec's kind or a record's name."""
  found = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Compare) and any(
        _spec_kind(a) or (isinstance(a, ast.Attribute) and a.attr == "name"
                          and isinstance(a.value, ast.Name) and a.value.id in ("self", "record"))
        for a in ast.walk(node)):
      found.append(f"{node.lineno}: {ast.unparse(node)}")
  return found


def test_the_classic_kinds_are_five_records_that_never_branch_on_their_kind():
  from bpref.oracle.ops import classic

  assert len({type(r) for r in classic.RECORDS}) == len(classic.RECORDS) == 5
  found = {name: _reads_a_kind((OPS / name).read_text()) for name in ("classic.py", "_kinds.py")}
  assert {k: v for k, v in found.items() if v} == {}
  assert _reads_a_kind('if self.name == "loss":\n  pass\n')
  assert _reads_a_kind('if spec.kind in ("dense", "layer"):\n  pass\n')
  assert not _reads_a_kind('if spec.name == "softmax":\n  pass\n')  # an activation's name


@pytest.mark.parametrize("record", kinds.RECORDS, ids=lambda r: r.name)
def test_a_kind_draws_the_same_case_from_the_same_label(record):
  spec = _spec(record)
  dims = record.probe_dims(spec)[0][-1]
  first = record.case(spec, Label(tuple(dims), "normal", 3))
  again = record.case(spec, Label(tuple(dims), "normal", 3))
  assert first.arrays.keys() == again.arrays.keys()
  for k in first.arrays:
    np.testing.assert_array_equal(first.arrays[k], again.arrays[k])


def test_every_kind_has_a_row_in_the_docs_table():
  docs = (OPS.parents[2] / "docs" / "oracle.md").read_text()
  rows = {line.split("|")[1].strip().split()[0].strip("`") for line in docs.splitlines()
          if line.startswith("| `")}
  assert set(kinds.KINDS) - rows == set()
