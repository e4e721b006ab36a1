"""A run described by a recipe: YAML and flags parsed once, then its model, data and rewards resolved.

Used by the command line (``knapsack-trl train``) and by experiments (``knapsack-trl compare --config``),
so both read a recipe the same way.
"""

from knapsack_trl.recipe.agents import recipe_agents
from knapsack_trl.recipe.arguments import PROG, TASKS, TRAINER_TYPES, KnapsackScriptArguments, RecipeError
from knapsack_trl.recipe.datasets import (
    check_dataset_source,
    check_recipe_dataset,
    dataset_is_local,
    file_split,
    file_split_note,
    load_recipe_dataset,
    looks_local,
    single_local_file,
)
from knapsack_trl.recipe.hardware import (
    ASSUME_GPU_FLAG,
    CPU_SMOKE_FLAG,
    check_hardware,
    cpu_smoke_flags,
    gpu_available,
    hardware_problems,
)
from knapsack_trl.recipe.models import (
    CACHE_ENV,
    TINY_MODELS,
    TINY_OPTIONS,
    dequantize_gguf,
    gguf_cache_folder,
    gguf_file,
    parse_tiny_spec,
    prepare_model,
    require_gguf,
)
from knapsack_trl.recipe.parse import (
    TINY_SCHEME,
    CommandLine,
    make_parser,
    parse_args,
    parse_command_line,
    read_recipe,
)
from knapsack_trl.recipe.rewards import preflight, recipe_rewards, reward_columns, reward_name
from knapsack_trl.recipe.summary import (
    budget_summary,
    describe_run,
    effective_n_max,
    fit_short_run,
    resolved_recipe,
)

__all__ = [
    "ASSUME_GPU_FLAG",
    "CACHE_ENV",
    "CPU_SMOKE_FLAG",
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
    "check_dataset_source",
    "check_hardware",
    "check_recipe_dataset",
    "cpu_smoke_flags",
    "dataset_is_local",
    "dequantize_gguf",
    "describe_run",
    "effective_n_max",
    "file_split",
    "file_split_note",
    "fit_short_run",
    "gguf_cache_folder",
    "gguf_file",
    "gpu_available",
    "hardware_problems",
    "load_recipe_dataset",
    "looks_local",
    "make_parser",
    "parse_args",
    "parse_command_line",
    "parse_tiny_spec",
    "preflight",
    "prepare_model",
    "read_recipe",
    "recipe_agents",
    "recipe_rewards",
    "require_gguf",
    "resolved_recipe",
    "reward_columns",
    "reward_name",
    "single_local_file",
]
