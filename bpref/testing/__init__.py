"""Tools for users' own test suites: hypothesis strategies, the oracle's assertions, bpref's
gradients in a few compiled programs, and a pytest plugin (``bpref.testing.plugin``)."""
from bpref.testing._assert import assert_backprop_correct as assert_backprop_correct
from bpref.testing._ops import assert_op_correct as assert_op_correct
from bpref.testing._reference import Reference as Reference
from bpref.testing._reference import reference_grads as reference_grads
