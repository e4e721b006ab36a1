"""``python -m knapsack_trl.benchmarks.allocation``: :mod:`knapsack_trl.experiments.benchmarks.allocation` under its published name."""

import sys

from knapsack_trl.experiments.benchmarks.allocation import main

if __name__ == "__main__":
    sys.exit(main())
