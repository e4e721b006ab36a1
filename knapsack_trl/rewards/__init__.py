"""The reward registry under its published name: :mod:`knapsack_trl.tasks.registry`."""

from knapsack_trl.tasks.registry import *  # noqa: F403
from knapsack_trl.tasks.registry import __all__  # noqa: F401
