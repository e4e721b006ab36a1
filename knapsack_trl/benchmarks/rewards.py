"""``python -m knapsack_trl.benchmarks.rewards``: :mod:`knapsack_trl.experiments.benchmarks.rewards` under its published name."""

import sys

from knapsack_trl.experiments.benchmarks.rewards import main

if __name__ == "__main__":
    sys.exit(main())
