"""The one seam to TRL: its private names appear in one module, and every override is TRL's own method
whenever the knapsack state was never set up (a trainer built without ``__init__``, as TRL's tests do)."""

from __future__ import annotations

import functools
import inspect
import io
import itertools
import re
import tokenize
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import transformers
import trl
from trl import GRPOTrainer, RLOOTrainer

from knapsack_trl import KnapsackGRPOConfig, KnapsackGRPOTrainer, KnapsackRLOOConfig, KnapsackRLOOTrainer
from knapsack_trl.trainer import trl_bridge
from knapsack_trl.trainer.trl_bridge import GRPOBridge, RLOOBridge

PACKAGE = Path(__file__).resolve().parents[1] / "knapsack_trl"
BRIDGE = PACKAGE / "trainer" / "trl_bridge.py"
TRAINERS = [(KnapsackGRPOTrainer, GRPOTrainer, GRPOBridge), (KnapsackRLOOTrainer, RLOOTrainer, RLOOBridge)]


def trl_private_names() -> set[str]:
    """Private methods and attributes of TRL's GRPO/RLOO trainers and transformers' Trainer beneath them:
    every ``self._name`` their sources read or write, and every private name on the classes."""
    names: set[str] = set()
    for module in (trl.trainer.grpo_trainer, trl.trainer.rloo_trainer, transformers.trainer):
        names |= set(re.findall(r"self\.(_[A-Za-z]\w*)", inspect.getsource(module)))
    for cls in (GRPOTrainer, RLOOTrainer):
        names |= {n for n in dir(cls) if n.startswith("_") and not n.startswith("__")}
    return {n for n in names if not n.startswith("__")}


def attribute_names(path: Path) -> list[tuple[int, str]]:
    """``(line, name)`` of every ``.name`` attribute access in the code of ``path`` (not strings or comments)."""
    tokens = list(tokenize.generate_tokens(io.StringIO(path.read_text()).readline))
    return [
        (tok.start[0], tok.string)
        for prev, tok in itertools.pairwise(tokens)
        if tok.type == tokenize.NAME and prev.type == tokenize.OP and prev.string == "."
    ]


def test_trl_private_names_appear_only_in_the_bridge() -> None:
    names = trl_private_names()
    assert {"_generate_and_score_completions", "_calculate_rewards", "_metrics", "_logs"} <= names
    found = sorted(
        f"{path.relative_to(PACKAGE)}:{line}: .{name}"
        for path in PACKAGE.rglob("*.py")
        if path != BRIDGE
        for line, name in attribute_names(path)
        if name in names
    )
    assert not found, "TRL's private names outside trainer/trl_bridge.py:\n" + "\n".join(found)
    assert {name for _, name in attribute_names(BRIDGE)} & names  # the bridge is where they are


def overridden(bridge: type) -> list[str]:
    """The TRL methods a bridge overrides (every private method it defines that TRL has)."""
    return [
        name
        for cls in bridge.__mro__
        if cls.__module__ == trl_bridge.__name__
        for name, value in vars(cls).items()
        if callable(value)
        and name.startswith("_")
        and not name.startswith("__")
        and hasattr(GRPOTrainer, name)
    ]


@pytest.mark.parametrize(("ours", "stock", "bridge"), TRAINERS, ids=["grpo", "rloo"])
def test_every_override_is_trls_method_without_knapsack_state(monkeypatch, ours, stock, bridge) -> None:
    names = overridden(bridge)
    assert {
        "_generate_and_score_completions",
        "_calculate_rewards",
        "_generate_single_turn",
        "_get_per_token_logps_and_entropies",
    } <= set(names)
    for name in names:
        required = [
            p
            for p in inspect.signature(getattr(stock, name)).parameters.values()
            if p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty and p.name != "self"
        ]
        args = tuple(object() for _ in required)
        calls: list[tuple[Any, ...]] = []
        sentinel = object()

        def stock_method(
            self: Any, *given: Any, _calls: list = calls, _out: object = sentinel, **kwargs: Any
        ) -> Any:
            _calls.append((self, given, kwargs))
            return _out

        monkeypatch.setattr(stock, name, stock_method)
        trainer = object.__new__(ours)  # no __init__: no knapsack state, as in TRL's own dispatch tests
        trainer.model = type("Model", (), {"training": True})()
        assert getattr(ours, name)(trainer, *args) is sentinel, name
        assert len(calls) == 1 and calls[0][0] is trainer and calls[0][1] == args, name


class _TextModel(torch.nn.Module):
    """Stands in for a causal LM whose forward takes ``logits_to_keep`` (never called here)."""

    def forward(self, input_ids: Any = None, attention_mask: Any = None, logits_to_keep: int = 0) -> Any:
        raise AssertionError("the model is not called in these dispatch tests")


class _OldModel(torch.nn.Module):
    def forward(self, input_ids: Any = None, attention_mask: Any = None) -> Any:
        raise AssertionError("the model is not called in these dispatch tests")


@pytest.mark.parametrize(("ours", "stock", "bridge"), TRAINERS, ids=["grpo", "rloo"])
@pytest.mark.parametrize(
    ("setting", "extra", "expected"),
    [
        (False, {}, "trl"),
        (True, {}, "completion"),
        (True, {"batch_size": 2, "compute_entropy": True, "compute_aux_loss": False}, "completion"),
        (True, {"pixel_values": torch.zeros(2, 3), "num_images": [1, 1]}, "trl"),
        (True, {"token_type_ids": torch.zeros(2, 6, dtype=torch.long)}, "trl"),
        (True, {"image_grid_thw": torch.ones(2, 3, dtype=torch.long)}, "trl"),
        (True, {"compute_aux_loss": True}, "trl"),
        (True, {"cast_lm_head_to_fp32": True}, "trl"),
        (True, {"logits_to_keep": 6}, "trl"),  # the completion is the whole sequence
        (True, {"model": _OldModel()}, "trl"),  # a forward without logits_to_keep
    ],
    ids=lambda v: "-".join(v) if isinstance(v, dict) else str(v),
)
def test_completion_logps_only_takes_text_and_gives_the_rest_to_trl(
    monkeypatch, ours, stock, bridge, setting, extra, expected
) -> None:
    """The completion-only path takes only text-only calls with the setting on; every other call reaches TRL's
    method with exactly its arguments (the numbers themselves: tests/test_completion_logps.py)."""
    original = stock._get_per_token_logps_and_entropies
    trl_calls: list[tuple[Any, ...]] = []
    ours_calls: list[dict[str, Any]] = []

    @functools.wraps(original)  # keeps TRL's signature, which the override binds the call to
    def stock_method(self: Any, *given: Any, **kwargs: Any) -> Any:
        trl_calls.append((given, kwargs))
        return "trl"

    def completion_logps(trainer: Any, **text: Any) -> Any:
        ours_calls.append(text)
        return "completion"

    monkeypatch.setattr(stock, "_get_per_token_logps_and_entropies", stock_method)
    monkeypatch.setattr(trl_bridge, "completion_logps", completion_logps)
    trainer = object.__new__(ours)
    extra = dict(extra)
    trainer.args = SimpleNamespace(
        knapsack_completion_logps_only=setting,
        cast_lm_head_to_fp32=extra.pop("cast_lm_head_to_fp32", False),
        report_to=[],
    )
    trainer.accelerator = SimpleNamespace(unwrap_model=lambda model: model, is_main_process=True)
    trainer.state = SimpleNamespace(global_step=0)
    trainer.beta = 0.0
    args = (
        extra.pop("model", _TextModel()),
        torch.ones(2, 6, dtype=torch.long),
        torch.ones(2, 6, dtype=torch.long),
    )
    args += (extra.pop("logits_to_keep", 4),)
    assert ours._get_per_token_logps_and_entropies(trainer, *args, **extra) == expected
    if expected == "trl":
        assert ours_calls == [] and len(trl_calls) == 1
        assert trl_calls[0][0] == args and trl_calls[0][1] == extra
    else:
        assert trl_calls == [] and len(ours_calls) == 1
        names = ("model", "input_ids", "attention_mask", "logits_to_keep")
        assert dict(zip(names, args, strict=True)).items() <= ours_calls[0].items()
        assert set(ours_calls[0]) == set(names) | (set(extra) - {"compute_aux_loss"})


@pytest.mark.parametrize("config_class", [KnapsackGRPOConfig, KnapsackRLOOConfig])
@pytest.mark.parametrize(
    ("given", "expected"),
    [({}, True), ({"gradient_checkpointing": False}, False), ({"activation_checkpointing": False}, False)],
)
def test_configs_warn_nothing_and_keep_the_checkpointing_choice(
    tmp_path, config_class, given, expected
) -> None:
    """TRL 1.16 defaults transformers' deprecated ``gradient_checkpointing`` name, which warns on every config
    from transformers 5.25; ours carries the value to the new name without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        args = config_class(
            output_dir=str(tmp_path),
            use_cpu=True,
            bf16=False,
            per_device_train_batch_size=8,
            num_generations=4,
            **given,
        )
    assert args.gradient_checkpointing is expected
