"""What a recipe asks of the machine: the checks the real run makes, and the ``--cpu-smoke`` overlay.

transformers refuses ``bf16`` at ``TrainingArguments`` construction when there is no bf16 GPU and
``use_cpu`` is off ("Your setup doesn't support bf16/gpu"), and ``tf32`` without an Ampere GPU. Later,
before any step, accelerate refuses ``fp16`` without a GPU, and TRL's vLLM paths (colocate, and the
server's weight sync over NCCL) need CUDA, as does bitsandbytes 4/8-bit loading. The dry run constructs
the real config (so construction's checks run as they would) and calls :func:`check_hardware` for the
rest; ``knapsack-trl train`` calls it too, before loading a model.

``--cpu-smoke`` (:func:`cpu_smoke_flags`) turns any recipe into a few-step CPU run: the flags it adds
override the recipe's values, and the command prints each change.

bf16 autocast on a CPU (``use_cpu: true`` with ``bf16: true``) is kept only where it is fast
(:func:`cpu_bf16_flags`): with AMX tiles (``amx_bf16``) oneDNN's bf16 matrix products measured 2.4-8x
fp32's here, with ``avx512_bf16`` alone 0.65-0.87x and without either 0.1-0.3x (``ONEDNN_MAX_CPU_ISA``
emulating those CPUs on this one), so elsewhere the run trains in fp32 and says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from knapsack_trl.recipe.arguments import PROG, RecipeError
from knapsack_trl.recipe.parse import CommandLine

CPU_SMOKE_FLAG = "--cpu-smoke"
ASSUME_GPU_FLAG = "--assume-gpu"
SMOKE_STEPS = 2
SMOKE_PROMPTS = 2
SMOKE_COMPLETION_TOKENS = 32
_FIX = f"add {CPU_SMOKE_FLAG} for a few-step CPU run, or train on a GPU host"
CPUINFO = Path("/proc/cpuinfo")
FAST_BF16_FLAG = "amx_bf16"


def gpu_available() -> bool:
    """Whether torch sees a CUDA device (what the checks below compare against)."""
    import torch

    return bool(torch.cuda.is_available())


def bf16_refusal(message: str) -> str | None:
    """The clear form of transformers' bf16 refusal (None when ``message`` is not that refusal)."""
    if "support bf16/gpu" not in message:
        return None
    return (
        "bf16: true needs a GPU with bf16 support and this machine has none (transformers refuses it when "
        f"use_cpu is false): set use_cpu: true (bf16 on CPU is fast only with AMX) or bf16: false, {_FIX}; "
        f"`{PROG} --dry-run {ASSUME_GPU_FLAG}` checks the rest of the recipe for a GPU host."
    )


def hardware_problems(training_args: Any, model_args: Any, has_gpu: bool | None = None) -> list[str]:
    """What the real run refuses on this machine after the config is built; empty when it can run."""
    has_gpu = gpu_available() if has_gpu is None else has_gpu
    if has_gpu:
        return []
    problems = []
    if training_args.fp16 or training_args.fp16_full_eval:
        problems.append(f"fp16: true needs a GPU (accelerate refuses fp16 on CPU): set fp16: false, {_FIX}.")
    if training_args.use_vllm:
        problems.append(
            f"use_vllm: true needs a GPU (vllm_mode {training_args.vllm_mode}: TRL generates or syncs weights "
            f"over CUDA): set use_vllm: false, {_FIX}."
        )
    if getattr(model_args, "load_in_4bit", False) or getattr(model_args, "load_in_8bit", False):
        problems.append(f"load_in_4bit / load_in_8bit need a GPU (bitsandbytes): set them false, {_FIX}.")
    return problems


def check_hardware(training_args: Any, model_args: Any) -> None:
    """Raise :class:`RecipeError` listing every field this machine cannot run (see :func:`hardware_problems`)."""
    problems = hardware_problems(training_args, model_args)
    if problems:
        raise RecipeError(" ".join(problems))


def cpu_smoke_flags(cli: CommandLine) -> tuple[list[str], list[str]]:
    """The flags that make ``cli``'s run a few-step CPU run, and one line per change for the user.

    The budget arithmetic stays valid: ``num_generations`` (the average rollouts per prompt) is kept and
    the batch becomes ``SMOKE_PROMPTS`` prompts, so ``n_min <= B / P <= n_max`` holds as it did.
    """
    group = int(cli.setting("num_generations") or 8)
    output_dir = str(cli.setting("output_dir") or "outputs/run")
    completion = cli.setting("max_completion_length")
    changes: dict[str, Any] = {
        "use_cpu": "true",
        "bf16": "false",
        "fp16": "false",
        "tf32": "false",
        "use_vllm": "false",
        "load_in_4bit": "false",
        "load_in_8bit": "false",
        "dtype": "float32",
        "max_steps": str(min(int(cli.setting("max_steps") or SMOKE_STEPS), SMOKE_STEPS)),
        "per_device_train_batch_size": str(group),
        "gradient_accumulation_steps": str(SMOKE_PROMPTS),
        "max_completion_length": str(min(int(completion or 256), SMOKE_COMPLETION_TOKENS)),
        "eval_strategy": "no",
        "save_strategy": "no",
        "push_to_hub": "false",
        "report_to": "none",
        "output_dir": f"{output_dir.rstrip('/')}-cpu-smoke",
    }
    # TRL accepts one of generation_batch_size / steps_per_generation; set the one the recipe uses.
    if cli.setting("steps_per_generation") is not None:
        changes["steps_per_generation"] = str(SMOKE_PROMPTS)
    else:
        changes["generation_batch_size"] = str(SMOKE_PROMPTS * group)
    flags, notes = [], []
    for name, value in changes.items():
        before = cli.setting(name)
        flags += [f"--{name}", value]
        unchanged_default = before is None and value in ("false", "no", "none")  # already the default
        if not unchanged_default and (before is None or str(before).lower() != value):
            notes.append(f"{name}: {before if before is not None else '(default)'} -> {value}")
    return flags, notes


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The CPU's feature flags as Linux lists them (empty where there is no ``/proc/cpuinfo``)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    return {
        flag
        for line in text.splitlines()
        if line.startswith("flags")
        for flag in line.split(":", 1)[1].split()
    }


def _true(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def cpu_bf16_flags(cli: CommandLine, flags: set[str] | None = None) -> tuple[list[str], list[str]]:
    """``--bf16 false`` and a note when ``cli`` asks for bf16 autocast on a CPU that lacks AMX (see the
    module docstring); nothing otherwise (a GPU run, fp32, or a CPU with ``amx_bf16``)."""
    if not (_true(cli.setting("use_cpu")) and _true(cli.setting("bf16"))):
        return [], []
    if FAST_BF16_FLAG in (cpu_flags() if flags is None else flags):
        return [], []
    note = (
        f"bf16: true -> false: this CPU has no AMX ({FAST_BF16_FLAG}), where bf16 matrix products are slower "
        "than fp32's, so the run trains in fp32 (see knapsack_trl.recipe.hardware)"
    )
    return ["--bf16", "false"], [note]
