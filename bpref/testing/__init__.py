"""Tools for users' own test suites: hypothesis strategies and the oracle's assertion."""
from bpref.testing._assert import assert_backprop_correct as assert_backprop_correct
from bpref.testing._ops import assert_op_correct as assert_op_correct
