"""``python -m knapsack_trl.rewards``: what isolation this machine gives untrusted code (exit 1 if
something a HumanEval reward needs is missing)."""

import sys

from knapsack_trl.rewards.sandbox import _self_check

sys.exit(_self_check())
