"""``python -m knapsack_trl.benchmarks.solvers``: :mod:`knapsack_trl.experiments.benchmarks.solvers` under its published name."""

import sys

from knapsack_trl.experiments.benchmarks.solvers import main

if __name__ == "__main__":
    sys.exit(main())
