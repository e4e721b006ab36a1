"""``python -m knapsack_trl.train`` and ``accelerate launch -m knapsack_trl.train``: the ``knapsack-trl train``
command (:mod:`knapsack_trl.cli.train`) under the module name accelerate launches."""

import sys

from knapsack_trl.cli.train import main, train

__all__ = ["main", "train"]

if __name__ == "__main__":
    sys.exit(main())
