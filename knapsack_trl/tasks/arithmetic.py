"""The tiny offline world: character tokenizer, small Llama, arithmetic prompts at difficulty levels, binary reward.

Tests, benchmarks and the demo need a policy that trains on 2 CPU cores with nothing from the Hub.
Everything here is built from code; :func:`save_tiny` writes a folder that ``from_pretrained`` (and so
TRL's reference-model and CLI paths) can load with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from knapsack_trl.tasks.text import completion_text

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
CHARS = tuple("0123456789+-*=? ")

# A plain template: message contents concatenated, nothing else. Conversational prompts then cost the
# same tokens as text ones, and the assistant's reply simply continues the prompt.
CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


def character_tokenizer(tokens: Sequence[str], chat_template: str) -> Any:
    """A left-padding ``PreTrainedTokenizerFast``: WordLevel over ``SPECIAL_TOKENS`` then ``tokens`` (single
    characters, or markers the caller also adds as tokens so they are not split)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate((*SPECIAL_TOKENS, *tokens))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def build_tokenizer() -> Any:
    """The tiny world's character-level tokenizer (digits, operators), left padding, a plain chat template."""
    return character_tokenizer(CHARS, CHAT_TEMPLATE)


def build_model(
    tokenizer: Any | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
) -> Any:
    """A freshly initialised tiny ``LlamaForCausalLM`` (deterministic for a given ``seed``)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model


def save_tiny(folder: str | os.PathLike[str], model: Any | None = None, tokenizer: Any | None = None) -> str:
    """Write model and tokenizer to ``folder`` (``save_pretrained``); returns the folder as a string.

    A model loaded from a local folder has that folder as its ``name_or_path``, which is what TRL
    reloads the reference model from when ``beta > 0`` without PEFT.
    """
    tokenizer = tokenizer or build_tokenizer()
    model = model or build_model(tokenizer)
    folder = os.fspath(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def load_tiny(folder: str | os.PathLike[str]) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` saved by :func:`save_tiny`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = os.fspath(folder)
    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def arithmetic_rows(n: int = 64, digits: Sequence[int] = (1, 2, 3), seed: int = 0) -> list[dict[str, str]]:
    """``n`` distinct addition problems ``"a+b="``, cycling through operand sizes for mixed difficulty.

    Each row has ``prompt``, ``answer`` and a stable ``prompt_id`` (the problem itself, so it survives
    re-shuffling and re-generation with another seed).
    """
    capacity = {d: (10**d - (0 if d == 1 else 10 ** (d - 1))) * 10**d for d in set(digits)}
    if n > sum(capacity.values()):
        raise ValueError(
            f"only {sum(capacity.values())} distinct problems have operand sizes {digits}; n={n}."
        )
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    used = dict.fromkeys(capacity, 0)
    turn = 0
    while len(rows) < n:
        d = digits[turn % len(digits)]
        if used[d] == capacity[d]:  # this size is exhausted: the others fill the rest
            turn += 1
            continue
        lo = 0 if d == 1 else 10 ** (d - 1)
        a, b = rng.randint(lo, 10**d - 1), rng.randint(0, 10**d - 1)
        prompt = f"{a}+{b}="
        if prompt in seen:
            continue
        seen.add(prompt)
        used[d] += 1
        turn += 1
        rows.append({"prompt": prompt, "answer": str(a + b), "prompt_id": f"add:{a}+{b}"})
    return rows


def arithmetic_dataset(n: int = 64, digits: Sequence[int] = (1, 2, 3), seed: int = 0) -> Any:
    """:func:`arithmetic_rows` as a ``datasets.Dataset``."""
    from datasets import Dataset

    return Dataset.from_list(arithmetic_rows(n, digits, seed))


def arithmetic_reward(completions: Sequence[Any], answer: Sequence[str], **kwargs: Any) -> list[float]:
    """1.0 when the completion's leading number equals the answer, else 0.0 (a binary success signal)."""
    rewards = []
    for completion, target in zip(completions, answer, strict=True):
        text = completion_text(completion).lstrip()
        digits = ""
        for ch in text:
            if not ch.isdigit():
                break
            digits += ch
        rewards.append(1.0 if digits == str(target) else 0.0)
    return rewards


LEVELS = {
    "easy": (1, 2),  # a one-digit number plus a number below 100
    "medium": (2, 2),
    "hard": (3, 3),
    "beyond": (4, 4),  # a four-digit number plus a number below 10,000: past what the warm-ups teach
}


def operand_digits(level: str) -> tuple[int, int] | None:
    """The operands' exact digit counts of a level named ``"A+B"`` (e.g. ``"3+2"``), None for other names."""
    parts = level.split("+")
    if len(parts) != 2 or not all(p.isdigit() and len(p) == 1 and p != "0" for p in parts):
        return None
    return int(parts[0]), int(parts[1])


def level_capacity(level: str) -> int:
    """How many distinct problems a level holds."""
    if level in LEVELS:
        da, db = LEVELS[level]
        return (10**da - (0 if da == 1 else 10 ** (da - 1))) * 10**db
    digits = operand_digits(level)
    if digits is None:
        raise ValueError(f"unknown level {level!r}: use one of {', '.join(LEVELS)} or 'A+B' (digit counts).")
    exact = [10**d - (0 if d == 1 else 10 ** (d - 1)) for d in digits]
    return exact[0] * exact[1]


def level_problem(rng: random.Random, level: str) -> dict[str, str]:
    """One ``a+b=`` problem in :func:`arithmetic_rows`' format (stable ``prompt_id``), at a level.

    Named levels (:data:`LEVELS`) take ``a`` with the first digit count and ``b`` below ``10**second``;
    ``"A+B"`` levels take ``a`` of exactly A digits and ``b`` of exactly B (``"3+2"``: 345+67).
    """
    digits = operand_digits(level)
    if digits is None:
        da, db = LEVELS[level]
        a = rng.randint(0 if da == 1 else 10 ** (da - 1), 10**da - 1)
        b = rng.randint(0, 10**db - 1)
    else:
        a, b = (rng.randint(0 if d == 1 else 10 ** (d - 1), 10**d - 1) for d in digits)
    return {"prompt": f"{a}+{b}=", "answer": str(a + b), "prompt_id": f"add:{a}+{b}", "level": level}


def make_splits(
    seed: int,
    pool_size: int,
    heldout_size: int,
    levels: Sequence[str] = tuple(LEVELS),
    sft_size: int = 20000,
    probe_size: int = 96,
    sft_levels: Sequence[str] | None = None,
) -> dict[str, list[dict[str, str]]]:
    """Disjoint problem sets, difficulty levels in equal shares (interleaved): ``sft``, ``probe``, ``pool``,
    ``heldout``.

    ``pool`` is GRPO's (it recurs, so history can help), ``heldout`` is only ever evaluated, ``probe``
    decides when the warm-up stops, ``sft`` (drawn with replacement) is the warm-up's data. ``probe`` and
    ``sft`` are at ``sft_levels`` (default ``levels``): a task may leave out of the warm-up a level beyond
    what it teaches. Built here rather than with :func:`arithmetic_rows` because the splits must be
    disjoint and that generator's one-digit space holds only 100 problems.
    """
    sft_levels = tuple(levels) if sft_levels is None else tuple(sft_levels)
    for level in (*levels, *sft_levels):
        level_capacity(level)  # an unknown level fails here, before any drawing
    rng = random.Random(seed)
    taken: set[str] = set()

    def distinct(n: int, at: Sequence[str] = levels) -> list[dict[str, str]]:
        rows: list[dict[str, str]] = []
        tries = 0
        while len(rows) < n:
            row = level_problem(rng, at[len(rows) % len(at)])
            tries += 1
            if row["prompt"] in taken:
                if tries > 100 * n:
                    raise ValueError(
                        f"cannot draw {n} distinct problems at levels {tuple(levels)} (capacities "
                        f"{[level_capacity(lv) for lv in levels]}): ask for fewer, or use larger levels."
                    )
                continue
            taken.add(row["prompt"])
            rows.append(row)
        return rows

    splits = {"heldout": distinct(heldout_size), "pool": distinct(pool_size)}
    splits["probe"] = distinct(probe_size, sft_levels)
    sft: list[dict[str, str]] = []
    while len(sft) < sft_size:
        row = level_problem(rng, rng.choice(sft_levels))
        if row["prompt"] not in taken:
            sft.append(row)
    splits["sft"] = sft
    return splits


def random_problems(n: int, seed: int) -> list[dict[str, str]]:
    """Addition problems with 1-3 digit operands, duplicates allowed (fine-tuning data)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        d = int(rng.integers(1, 4))
        a = int(rng.integers(0 if d == 1 else 10 ** (d - 1), 10**d))
        b = int(rng.integers(0, 10**d))
        rows.append({"prompt": f"{a}+{b}=", "answer": str(a + b)})
    return rows
