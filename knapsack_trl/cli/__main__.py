"""``python -m knapsack_trl.cli``: the ``knapsack-trl`` console script."""

import sys

from knapsack_trl.cli import main

sys.exit(main())
