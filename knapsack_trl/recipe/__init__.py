"""A run described by a recipe: YAML and flags parsed once, then its model, data and rewards resolved.

Used by the command line (``knapsack-trl train``) and by experiments (``knapsack-trl compare --config``),
so both read a recipe the same way.
"""

from knapsack_trl.recipe.agents import recipe_agents
from knapsack_trl.recipe.arguments import PROG, TASKS, TRAINER_TYPES, KnapsackScriptArguments, RecipeError
from knapsack_trl.recipe.datasets import check_recipe_dataset, dataset_is_local, load_recipe_dataset
from knapsack_trl.recipe.models import TINY_MODELS, TINY_OPTIONS, parse_tiny_spec, prepare_model
from knapsack_trl.recipe.parse import (
    TINY_SCHEME,
    CommandLine,
    make_parser,
    parse_args,
    parse_command_line,
    read_recipe,
)
from knapsack_trl.recipe.rewards import preflight, recipe_rewards, reward_columns, reward_name
from knapsack_trl.recipe.summary import budget_summary, describe_run, resolved_recipe

__all__ = [
    "PROG",
    "TASKS",
    "TINY_MODELS",
    "TINY_OPTIONS",
    "TINY_SCHEME",
    "TRAINER_TYPES",
    "CommandLine",
    "KnapsackScriptArguments",
    "RecipeError",
    "budget_summary",
    "check_recipe_dataset",
    "dataset_is_local",
    "describe_run",
    "load_recipe_dataset",
    "make_parser",
    "parse_args",
    "parse_command_line",
    "parse_tiny_spec",
    "preflight",
    "prepare_model",
    "read_recipe",
    "recipe_agents",
    "recipe_rewards",
    "resolved_recipe",
    "reward_columns",
    "reward_name",
]
