"""``python -m knapsack_trl.rewards``: the sandbox's self-check (``python -m knapsack_trl.tasks.sandbox``)."""

import sys

from knapsack_trl.tasks.sandbox.runner import self_check

sys.exit(self_check())
