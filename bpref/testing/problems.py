"""``bpref.problems`` under its earlier import path: random problems for verification runs.

The problem generator lives in ``bpref.problems``, below the oracle that draws from it; this
module re-exports it so that ``from bpref.testing import problems`` keeps working.
"""

from bpref.problems import BATCHES as BATCHES
from bpref.problems import DRAWS as DRAWS
from bpref.problems import HIDDEN as HIDDEN
from bpref.problems import LAYOUTS as LAYOUTS
from bpref.problems import SOFT_TARGETS as SOFT_TARGETS
from bpref.problems import UNNORMALIZED as UNNORMALIZED
from bpref.problems import WIDTHS as WIDTHS
from bpref.problems import Problem as Problem
from bpref.problems import ProblemInOut as ProblemInOut
from bpref.problems import min_output_width as min_output_width
from bpref.problems import output_activation as output_activation
from bpref.problems import random_problem as random_problem
from bpref.problems import strata as strata
from bpref.problems import targets as targets
from bpref.problems import vacuous as vacuous

__all__ = ["BATCHES", "DRAWS", "HIDDEN", "LAYOUTS", "Problem", "ProblemInOut", "SOFT_TARGETS",
           "UNNORMALIZED", "WIDTHS", "min_output_width", "output_activation",
           "random_problem", "strata", "targets", "vacuous"]
