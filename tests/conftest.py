"""Shared fixtures for the trainer tests: a tiny model saved to a folder, a dataset, reward functions.

Everything is built offline from code (``knapsack_trl.tasks.arithmetic``); nothing comes from the Hub.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import REWARDS, record_generations

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models on a shared 2-core box: one intra-op thread avoids OpenMP oversubscription.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny model and tokenizer saved with ``save_pretrained`` (loadable offline by path)."""
    from knapsack_trl.tasks.arithmetic import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_dir: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture
def tiny_model(tiny_dir: str) -> Callable[[], Any]:
    """Factory: a fresh copy of the same tiny model (every trainer needs its own)."""
    from transformers import AutoModelForCausalLM

    return lambda: AutoModelForCausalLM.from_pretrained(tiny_dir)


@pytest.fixture(scope="session")
def train_dataset() -> Any:
    """16 arithmetic prompts of 1-3 digit operands, with ``prompt``, ``answer`` and ``prompt_id``."""
    from knapsack_trl.tasks.arithmetic import arithmetic_dataset

    return arithmetic_dataset(16, digits=(1, 2, 3))


@pytest.fixture
def rewards() -> dict[str, Callable[..., list[Any]]]:
    return dict(REWARDS)


@pytest.fixture
def tiny_args(tmp_path: Path) -> Callable[..., Any]:
    """Factory: ``tiny_args(ConfigClass, **overrides)`` with CPU-sized defaults (B = 16, 4 prompts of 4)."""

    def make(config_cls: type, **overrides: Any) -> Any:
        kwargs: dict[str, Any] = dict(
            output_dir=str(tmp_path / "out"),
            use_cpu=True,
            bf16=False,
            gradient_checkpointing=False,
            report_to="none",
            per_device_train_batch_size=8,
            gradient_accumulation_steps=2,
            num_generations=4,
            max_completion_length=8,
            max_steps=2,
            logging_steps=1,
            save_strategy="no",
            learning_rate=1e-3,
            seed=0,
            disable_tqdm=True,
        )
        if any(f.name == "knapsack_candidate_factor" for f in dataclasses.fields(config_cls)):
            # the trainer tests pin one generation batch of P prompts; candidates have their own tests
            kwargs["knapsack_candidate_factor"] = 1
        kwargs.update(overrides)
        return config_cls(**kwargs)

    return make


@pytest.fixture
def recorder() -> Callable[[Any], list[dict[str, Any]]]:
    return record_generations


@pytest.fixture
def run_pair(
    tiny_model: Callable[[], Any], tiny_tokenizer: Any, train_dataset: Any, tiny_args: Callable[..., Any]
) -> Callable[..., Any]:
    """Factory: train the stock trainer and the knapsack trainer on identical inputs; return both runs.

    Each run is ``(trainer, generation outputs, losses, final parameters)``.
    """

    def run(stock_cls: type, stock_cfg: type, knap_cls: type, knap_cfg: type, reward_funcs, **overrides: Any):
        knap_overrides = {k: v for k, v in overrides.items() if k.startswith("knapsack_")}
        common = {k: v for k, v in overrides.items() if not k.startswith("knapsack_")}
        model_factory = common.pop("model_factory", tiny_model)
        runs = []
        for cls, cfg in ((stock_cls, tiny_args(stock_cfg, **common)), (knap_cls, None)):
            if cfg is None:
                cfg = tiny_args(knap_cfg, **common, **knap_overrides)
            trainer = cls(
                model=model_factory(),
                reward_funcs=reward_funcs,
                args=cfg,
                train_dataset=train_dataset,
                processing_class=tiny_tokenizer,
            )
            outputs = record_generations(trainer)
            trainer.train()
            losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
            params = [p.detach().clone() for p in trainer.model.parameters()]
            runs.append((trainer, outputs, losses, params))
        return runs

    return run


@pytest.fixture
def isolation_or_skip() -> None:
    """Skips unless this machine isolates untrusted code fully for this user (else the runners refuse)."""
    from helpers import isolated

    if not isolated():
        pytest.skip(
            "this machine cannot isolate untrusted code: the runners refuse (the class 2 and 7 tests)"
        )
