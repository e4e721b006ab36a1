"""Short arithmetic in chat form, for instruct models: the data and its strict reward, side by side.

Prompts are conversations (``[{"role": "user", "content": "What is 23 + 45? ..."}]``) asking for the
result as ``Answer: N``, so TRL applies the model's chat template and an instruct model answers in a
handful of tokens (``max_completion_length`` of 16 is enough). Problems are additions and
subtractions of 1- or 2-digit numbers; a problem belongs to the ``test`` split when a hash of its text
says so (about one in five), so train and test never share a problem, whatever the seed.

The reward is strict, because a lenient one pays for guessing. A completion scores 1 only when it has at
most one answer marker (``Answer:``, any case; without one the whole reply is the answer), the text
after the marker is not hedged or negated ("Answer: 78 or 79", "Answer: not 5", "Answer: about 80")
and holds exactly one number after its last ``=`` ("Answer: 23 + 45 = 78" states 78; "Answer: 78, 79"
and "Answer: 78\nActually 79" state nothing), and that number equals the result. The number is read by
the GSM8K answer rules (:func:`knapsack_trl.tasks.gsm8k.answers.final_answer`).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from knapsack_trl.tasks.gsm8k.answers import HEDGE, final_answer, numbers_equal, parse_number
from knapsack_trl.tasks.records import messages
from knapsack_trl.tasks.text import completion_text

CHAT_ARITHMETIC_INSTRUCTION = "Reply with the number only, as 'Answer: <number>'."
SPLITS = ("train", "test")
TEST_SHARE = 5  # one problem in TEST_SHARE (by hash) is a test problem
# ``\s*(?:\*+\s*)?`` and not ``\s*\**\s*``: two adjacent runs that can both match spaces backtrack
# quadratically over a long run of them.
_MARKER = re.compile(r"\banswer\s*(?:\*+\s*)?:", re.IGNORECASE)
_DIGIT_RUN = re.compile(r"\d+(?:[.,]\d+)*")


def problem_split(prompt_id: str) -> str:
    """``test`` for about one problem in :data:`TEST_SHARE` (a stable hash of its id), else ``train``."""
    digest = hashlib.sha256(prompt_id.encode()).digest()
    return "test" if digest[0] % TEST_SHARE == 0 else "train"


def chat_arithmetic_rows(
    n: int = 64,
    split: str = "train",
    seed: int = 0,
    digits: Sequence[int] = (1, 2),
    instruction: str | None = None,
    system_prompt: str | None = None,
) -> list[dict[str, Any]]:
    """``n`` distinct problems of ``split``: columns ``prompt`` (chat messages), ``question``,
    ``answer`` (the result as text) and a stable ``prompt_id`` (``"chat:23+45"``)."""
    if split not in SPLITS:
        raise ValueError(f"chat_arithmetic has splits {SPLITS}, not {split!r}.")
    instruction = CHAT_ARITHMETIC_INSTRUCTION if instruction is None else instruction
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    tries = 0
    while len(rows) < n:
        tries += 1
        if tries > 200 * n:
            raise ValueError(
                f"cannot draw {n} distinct {split} problems with {tuple(digits)}-digit operands."
            )
        d = digits[tries % len(digits)]  # by draw, not by row: a small operand size that runs out is no stall
        a, b = (rng.randint(0 if d == 1 else 10 ** (d - 1), 10**d - 1) for _ in range(2))
        op = rng.choice("+-")
        a, b = (max(a, b), min(a, b)) if op == "-" else (a, b)  # no negative results
        pid = f"chat:{a}{op}{b}"
        if pid in seen or problem_split(pid) != split:
            continue
        seen.add(pid)
        question = f"What is {a} {op} {b}?"
        user = f"{question} {instruction}" if instruction else question
        result = a + b if op == "+" else a - b
        rows.append(
            {
                "prompt": messages(system_prompt, user),
                "question": question,
                "answer": str(result),
                "prompt_id": pid,
            }
        )
    return rows


def chat_arithmetic_dataset(n: int = 64, split: str = "train", seed: int = 0, **kwargs: Any) -> Any:
    """:func:`chat_arithmetic_rows` as a ``datasets.Dataset``."""
    from datasets import Dataset

    return Dataset.from_list(chat_arithmetic_rows(n, split, seed, **kwargs))


def strict_answer(text: str) -> Fraction | None:
    """The one number a completion states after its ``Answer:`` marker (if any), or None (module doc)."""
    markers = list(_MARKER.finditer(text))
    if len(markers) > 1:
        return None
    tail = text[markers[0].end() :] if markers else text
    if HEDGE.search(tail) or len(_DIGIT_RUN.findall(tail[tail.rfind("=") + 1 :])) != 1:
        return None
    found = final_answer("answer: " + tail.strip(), fallback_last_number=False)
    return None if found is None else found.value


def chat_arithmetic_reward(completions: Sequence[Any], answer: Sequence[str], **kwargs: Any) -> list[float]:
    """1.0 when :func:`strict_answer` equals the result, else 0.0 (a binary success signal)."""
    if len(answer) != len(completions):
        raise ValueError(f"chat_arithmetic reward: {len(completions)} completions but {len(answer)} answers")
    scores = []
    for completion, gold in zip(completions, answer):
        try:
            value = strict_answer(completion_text(completion))
        except TypeError:  # not text: no answer
            value = None
        target = parse_number(str(gold), last=False)
        scores.append(
            1.0 if value is not None and target is not None and numbers_equal(value, target) else 0.0
        )
    return scores


chat_arithmetic_reward.__name__ = chat_arithmetic_reward.__qualname__ = "chat_arithmetic"
