"""knapsack-trl: knapsack rollout allocation for TRL's GRPO and RLOO trainers."""

__version__ = "0.1.0"
