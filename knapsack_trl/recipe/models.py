"""A recipe's ``model_name_or_path``: a hub name, a local folder, a ``.gguf`` file, or a ``tiny://`` model.

A GGUF file is dequantized once into a plain folder (fp32 safetensors, tokenizer, chat template) that
every later load uses: transformers refuses to save a GGUF-loaded model ("quantized with gguf and is not
serializable"), so TRL's reference-model reload (``beta > 0``) and checkpoints need a plain copy. The
folder is ``$KNAPSACK_TRL_CACHE/gguf/<stem>-<key>`` (default ``~/.cache/knapsack_trl``), the key a hash
of the file's resolved path, size and modification time: a changed file gets a fresh folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
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
GGUF_SUFFIX = ".gguf"
CACHE_ENV = "KNAPSACK_TRL_CACHE"


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
    """The model path the trainer loads: a ``tiny://`` model is built and saved under ``output_dir`` first,
    a GGUF file is dequantized into its cache folder (:func:`dequantize_gguf`).

    Saving (rather than passing a model object) keeps one code path for every model and lets TRL reload
    the reference model by path when ``beta > 0``. The main process writes it; the others wait.
    """
    spec = model_args.model_name_or_path
    gguf = gguf_file(spec)
    if gguf is not None:
        with training_args.main_process_first(desc="dequantize the GGUF model"):
            return str(dequantize_gguf(gguf))
    if not spec.startswith(TINY_SCHEME):
        return spec
    name, options = parse_tiny_spec(spec)
    folder = Path(training_args.output_dir) / "tiny_init"
    with training_args.main_process_first(desc="build the tiny model"):
        if not (folder / "config.json").exists():
            tokenizer = TINY_TOKENIZERS[name]()
            save_tiny(folder, build_model(tokenizer, **options), tokenizer)
    return str(folder)


def gguf_file(spec: str) -> Path | None:
    """The GGUF file ``spec`` names (a ``.gguf`` path, or a folder holding one and no ``config.json``)."""
    if spec.startswith(TINY_SCHEME):
        return None
    path = Path(spec).expanduser()
    if path.suffix.lower() == GGUF_SUFFIX:
        if not path.is_file():
            raise RecipeError(f"model_name_or_path={spec!r}: no such GGUF file; check the path.")
        return path
    if not path.is_dir() or (path / "config.json").exists():
        return None
    found = sorted(path.glob(f"*{GGUF_SUFFIX}"))
    if len(found) > 1:
        raise RecipeError(
            f"model_name_or_path={spec!r} holds {len(found)} GGUF files ({', '.join(f.name for f in found)}); "
            "name one of them."
        )
    return found[0] if found else None


def gguf_cache_folder(path: str | os.PathLike[str]) -> Path:
    """Where the dequantized copy of the GGUF file ``path`` lives (see the module docstring)."""
    path = Path(path).expanduser().resolve()
    stat = path.stat()
    key = hashlib.sha256(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "knapsack_trl").expanduser()
    return root / "gguf" / f"{path.stem}-{key}"


def require_gguf(spec: str) -> None:
    """Fail before any loading when the ``gguf`` package (transformers' GGUF reader) is missing."""
    if importlib.util.find_spec("gguf") is None:
        raise RecipeError(
            f"model_name_or_path={spec!r} is a GGUF file, which needs the `gguf` package: "
            "pip install gguf (or, in your knapsack-trl clone, pip install -e '.[gguf]'), or point "
            "model_name_or_path at a plain Hugging Face folder."
        )


def dequantize_gguf(path: str | os.PathLike[str], folder: str | os.PathLike[str] | None = None) -> Path:
    """The plain HF folder for the GGUF file ``path``, written on the first call and reused after.

    The workaround for "quantized with gguf and is not serializable": drop ``quantization_config``,
    build a fresh model from the config, copy the dequantized fp32 weights in, save. The folder appears
    atomically (written beside it, then renamed), so an interrupted run leaves no half-written cache.
    """
    path = Path(path).expanduser()
    folder = Path(folder) if folder is not None else gguf_cache_folder(path)
    if (folder / "config.json").exists():
        return folder
    require_gguf(str(path))
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = {"pretrained_model_name_or_path": str(path.parent), "gguf_file": path.name}
    tokenizer = AutoTokenizer.from_pretrained(**source)
    loaded = AutoModelForCausalLM.from_pretrained(**source, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    stat = path.stat()
    record = {"gguf_file": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    (partial / "knapsack_trl_gguf_source.json").write_text(json.dumps(record, indent=2) + "\n")
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        partial.rename(folder)
    except OSError:  # another process finished first: keep its folder
        shutil.rmtree(partial, ignore_errors=True)
        if not (folder / "config.json").exists():
            raise
    return folder
