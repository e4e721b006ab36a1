"""``python -m knapsack_trl.benchmarks.value_head``: :mod:`knapsack_trl.experiments.benchmarks.value_head` under its published name."""

import sys

from knapsack_trl.experiments.benchmarks.value_head import main

if __name__ == "__main__":
    sys.exit(main())
