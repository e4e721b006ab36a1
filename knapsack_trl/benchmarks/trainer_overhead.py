"""``python -m knapsack_trl.benchmarks.trainer_overhead``: :mod:`knapsack_trl.experiments.benchmarks.trainer_overhead` under its published name."""

import sys

from knapsack_trl.experiments.benchmarks.trainer_overhead import main

if __name__ == "__main__":
    sys.exit(main())
