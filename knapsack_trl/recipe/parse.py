"""Read a run's command line once: the recipe YAML (read once), the flags, then TRL's ``TrlParser``.

The counterpart of TRL's ``scripts/grpo.py`` parsing: YAML keys are dataclass fields, command-line flags
override them, and an ``env:`` block is exported before TRL is imported. Three dataclasses are parsed:
:class:`KnapsackScriptArguments`, ``KnapsackGRPOConfig`` or ``KnapsackRLOOConfig`` (picked by
``trainer_type`` before the real parse) and TRL's ``ModelConfig``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knapsack_trl.recipe.arguments import PROG, TRAINER_TYPES, KnapsackScriptArguments, RecipeError

TINY_SCHEME = "tiny://"


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
    if not isinstance(data.get("env", {}), dict):
        raise RecipeError(f"recipe {path}: `env` must be a mapping of VARIABLE: value.")
    return data


@dataclass(frozen=True)
class CommandLine:
    """A run's arguments, scanned once: the recipe (its YAML read once) and the flags that override it.

    ``argv`` has ``--config=PATH`` split into ``--config PATH`` (TrlParser only finds that form);
    ``flags`` maps each ``--field`` (dashes or underscores) to its last value, None for a bare flag.
    """

    argv: list[str]
    recipe_path: str | None
    recipe: dict[str, Any]
    flags: dict[str, str | None]

    @classmethod
    def read(cls, argv: Sequence[str]) -> CommandLine:
        args: list[str] = []
        flags: dict[str, str | None] = {}
        raw = list(argv)
        for i, arg in enumerate(raw):
            if arg.startswith("--config="):
                args += ["--config", arg.split("=", 1)[1]]
            else:
                args.append(arg)
            if arg.startswith("--"):
                name, _, value = arg[2:].partition("=")
                following = raw[i + 1] if i + 1 < len(raw) and not raw[i + 1].startswith("--") else None
                flags[name.replace("-", "_")] = value if "=" in arg else following
        path = flags.get("config")
        return cls(args, path, read_recipe(path) if path else {}, flags)

    def setting(self, name: str) -> Any:
        """A field's value as given: the flag's, else the recipe's, else None."""
        return self.flags[name] if name in self.flags else self.recipe.get(name)

    @property
    def trainer_type(self) -> str:
        """``trainer_type`` (flag, recipe, else ``grpo``): it picks the config class."""
        value = self.setting("trainer_type")
        value = "grpo" if value is None else str(value).lower()
        if value not in TRAINER_TYPES:
            raise RecipeError(f"trainer_type={value!r} is not known: use one of {', '.join(TRAINER_TYPES)}.")
        return value

    @property
    def dry_run(self) -> bool:
        """Whether the command line or the recipe asks for a dry run (known before parsing)."""
        if "dry_run" in self.flags:
            return str(self.flags["dry_run"]).lower() in ("none", "true", "1", "yes")
        return self.recipe.get("dry_run") is True

    def set_keys(self) -> list[str]:
        """The field names the recipe and the flags set, in order (recipe first)."""
        keys = [key for key in self.recipe if key != "env"]
        keys += [key for key in self.flags if key != "config" and key not in keys]
        return keys


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


def parse_command_line(cli: CommandLine, extra: Sequence[str] = ()) -> tuple[Any, Any, Any]:
    """Parse ``cli`` (plus ``extra`` flags) into (script args, trainer config, model config).

    Raises :class:`RecipeError` naming the field for unknown keys and for values the configs reject
    (their own ``__post_init__`` checks, budget arithmetic included).
    """
    # Export the env block before trl / huggingface_hub are imported: they read HF_* variables at import.
    for key, value in cli.recipe.get("env", {}).items():
        os.environ[str(key)] = str(value)
    trainer_type = cli.trainer_type
    parser = make_parser(trainer_type)
    known = {action.dest for action in parser._actions if action.dest != "help"}
    unknown = [key for key in cli.recipe if key != "env" and key not in known]
    if unknown:
        raise RecipeError(_unknown_key_message(unknown, known, f"recipe {cli.recipe_path}", trainer_type))
    try:
        *parsed, remaining = parser.parse_args_and_config([*cli.argv, *extra], return_remaining_strings=True)
    except (ValueError, TypeError) as exc:
        from knapsack_trl.recipe.hardware import bf16_refusal

        message = bf16_refusal(str(exc)) or str(exc)
        raise RecipeError(f"{cli.recipe_path or 'command line'}: {message}") from exc
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


def parse_args(argv: Sequence[str]) -> tuple[Any, Any, Any]:
    """:func:`parse_command_line` of ``argv`` (``--config RECIPE.yaml`` plus flags)."""
    return parse_command_line(CommandLine.read(argv))
