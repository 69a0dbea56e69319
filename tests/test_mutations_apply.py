"""scripts/mutate.py's mutations still apply to the core as it is today.

The mutation table (docs/verification.md) is measured with scripts/mutate.py, which patches
an exact text of a core file. A refactoring that changes that text would leave the script
unable to run, and the table unmeasurable, without any test failing: this test fails first.
"""

import pytest

import scripts
from scripts import ROOT


def _mutations():
  return scripts.load("mutate").MUTATIONS


@pytest.mark.parametrize("mutation", _mutations(), ids=lambda m: m.name)
def test_each_mutation_patches_exactly_one_place(mutation):
  source = (ROOT / mutation.file).read_text()
  assert source.count(mutation.old) == 1, (mutation.name, mutation.file)
  assert source.replace(mutation.old, mutation.new) != source
