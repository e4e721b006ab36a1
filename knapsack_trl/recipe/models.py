"""A recipe's ``model_name_or_path``: a hub name, a local folder, or a ``tiny://`` model built offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from knapsack_trl.recipe.arguments import RecipeError
from knapsack_trl.recipe.parse import TINY_SCHEME
from knapsack_trl.tasks import calculator
from knapsack_trl.tasks.arithmetic import build_model, build_tokenizer, save_tiny

TINY_MODELS = ("arithmetic", "calculator")
TINY_TOKENIZERS = {"arithmetic": build_tokenizer, "calculator": calculator.build_tokenizer}
TINY_OPTIONS = {"hidden_size": int, "num_layers": int, "seed": int}


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
    name, options = parse_tiny_spec(spec)
    folder = Path(training_args.output_dir) / "tiny_init"
    with training_args.main_process_first(desc="build the tiny model"):
        if not (folder / "config.json").exists():
            tokenizer = TINY_TOKENIZERS[name]()
            save_tiny(folder, build_model(tokenizer, **options), tokenizer)
    return str(folder)
