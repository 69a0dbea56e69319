"""mygrad's own backward passes, judged by the oracle (scripts/outside_autodiff.py).

Every op kind mygrad has, each activation as an op and as a layer, and whole networks, in both
dtypes at seed 0: each check passes, or fails with the finding that names one of mygrad's
defects (``KNOWN``: leaky_relu'(0) = 0, conv_nd and max_pool refusing windows that do not tile
the input). A pass where a defect is known is a miss, as a failure elsewhere is a false alarm.
mygrad's elu takes e^z of every z and selects, so NumPy warns of an overflow in exp: the suite
turns warnings into errors, and that one is let through as the warning a user sees.
Needs the ``outside`` extra (mygrad); tinygrad's checks compile a kernel per shape and run from
the script only.
"""

import pytest

import scripts

pytest.importorskip("mygrad")
autodiff = scripts.load("outside_autodiff")

CHECKS = [(label, run, dtype) for label, run in autodiff.jobs("mg", autodiff._mygrad())
          for dtype in ("float64", "float32")]


@pytest.mark.filterwarnings("default::RuntimeWarning")  # NumPy's overflow in exp, as users see it
@pytest.mark.parametrize("label, run, dtype", CHECKS, ids=[f"{c[0]}-{c[2]}" for c in CHECKS])
def test_mygrad_passes_or_its_defect_is_named(label, run, dtype):
  report = run(dtype=dtype, seed=0)
  allowed = autodiff.known(label, dtype)
  if allowed:
    assert report.verdict == "fail" and report.codes[:1] and report.codes[0] in allowed, report.text()
  else:
    assert report.verdict == "pass", report.text()
  assert autodiff.expected(label, dtype, report)


def test_the_defects_it_names_are_mygrads():
  # each KNOWN entry for mygrad matches at least one check, so none is stale
  labels = {label for label, _, _ in CHECKS}
  for prefix in (p for p in autodiff.KNOWN if p.startswith("mg/")):
    assert any(label.startswith(prefix) for label in labels), prefix
