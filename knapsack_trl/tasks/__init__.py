"""Tasks: each one's data loader, prompt format, answer parser and reward, beside one another.

``arithmetic`` (the tiny offline world), ``gsm8k``, ``humaneval``; ``records`` reads local or hub data;
``text`` gets the text out of a completion. The reward registry and the code sandbox are in
:mod:`knapsack_trl.rewards`.
"""
