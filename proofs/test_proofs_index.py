"""The index of proofs/README.md stays true both ways: every quoted tag is on a line of its
file, every named test exists (and every erratum of errata.md names an existing test), and
every equation that a comment in bpref/ cites has a row."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "proofs" / "README.md").read_text(encoding="utf-8")
ERRATA = (ROOT / "proofs" / "errata.md").read_text(encoding="utf-8")


def _index_rows():
  rows = []
  for line in README.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) == 3 and cells[1].startswith("`bpref/"):
      path = re.match(r"`([^`]+)`", cells[1]).group(1)
      tag = re.search(r'"([^"]+)"', cells[1]).group(1)
      tests = re.findall(r"`((?:proofs|tests)/[^`:]+)::(\w+)`", cells[2])
      rows.append((cells[0], path, tag, tests))
  return rows


def _defines(path, name):
  return re.search(rf"^def {name}\(", (ROOT / path).read_text(encoding="utf-8"), re.M) is not None


def test_index_is_not_empty():
  assert len(_index_rows()) >= 20


def test_every_index_tag_is_in_its_file():
  for result, path, tag, _ in _index_rows():
    lines = (ROOT / path).read_text(encoding="utf-8").splitlines()
    assert any(tag in line for line in lines), f"{result}: {tag!r} not found in {path}"


def test_every_index_test_exists():
  for result, _, _, tests in _index_rows():
    assert tests, result
    for path, name in tests:
      assert _defines(path, name), f"{result}: {path}::{name} does not exist"


def test_every_erratum_names_an_existing_test():
  rows = [line for line in ERRATA.splitlines() if re.match(r"\| E\d+ \|", line)]
  assert len(rows) > 10
  for row in rows:
    names = re.findall(r"`(test_\w+)`", row)
    assert names, row
    where = "proofs/test_scaling.py" if "[scaling]" in row else "proofs/test_errata.py"
    for name in names:
      assert _defines(where, name), f"{row.split('|')[1]}: {name} not in {where}"


def test_every_equation_cited_in_the_code_has_a_row():
  indexed = set()
  for result, _, tag, _ in _index_rows():
    indexed |= set(re.findall(r"\((\d{1,2})\)", result + " " + tag))
  missing = []
  for path in sorted((ROOT / "bpref").rglob("*.py")):
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
      if "#" not in line:
        continue
      for n in re.findall(r"\((\d{1,2})\)", line.split("#", 1)[1]):
        if 1 <= int(n) <= 39 and n not in indexed:  # the seed's equations are (1)-(39)
          missing.append(f"{path.relative_to(ROOT)}:{i} cites ({n})")
  assert not missing, "equations cited in bpref/ without an index row:\n  " + "\n  ".join(missing)


def test_some_rows_name_tests_of_the_suite():
  named = [path for *_, tests in _index_rows() for path, _ in tests]
  assert any(path.startswith("tests/") for path in named)
