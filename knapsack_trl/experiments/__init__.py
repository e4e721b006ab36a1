"""Experiments on top of the library: the demo, side-by-side comparisons, reports, plots, benchmarks.

Everything here uses the trainers' public API (``add_knapsack_listener``, ``knapsack_allocator``), never
their private methods.
"""
