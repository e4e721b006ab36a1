"""``python -m knapsack_trl.benchmarks.step_speed``: :mod:`knapsack_trl.experiments.benchmarks.step_speed` under its published name."""

import sys

from knapsack_trl.experiments.benchmarks.step_speed import main

if __name__ == "__main__":
    sys.exit(main())
