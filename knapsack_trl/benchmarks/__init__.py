"""Published names of the benchmarks (``python -m knapsack_trl.benchmarks.NAME``); they live in
:mod:`knapsack_trl.experiments.benchmarks`."""
