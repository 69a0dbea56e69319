"""Tools for users' own test suites: hypothesis strategies and the oracle's assertion."""
