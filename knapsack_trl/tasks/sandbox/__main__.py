"""``python -m knapsack_trl.tasks.sandbox``: what isolation this machine gives untrusted code (exit 1 if
something a HumanEval reward needs is missing)."""

import sys

from knapsack_trl.tasks.sandbox.runner import self_check

sys.exit(self_check())
