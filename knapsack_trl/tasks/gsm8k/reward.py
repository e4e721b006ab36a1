"""GSM8K rewards: final-answer accuracy (binary, the tracker's success signal) and answer format.

The answer is one number *stated as final*, taken from the first of these the completion has:

1. the last ``\\boxed{...}`` (or ``\\fbox{...}``) that is not inside another box (a box inside a box is
   part of the outer box's content: ``\\boxed{43 \\boxed{42}}`` states no plain number and scores 0);
2. the last ``#### N`` (GSM8K's own format; a ``#### Step 2`` line that starts with a word is a
   markdown heading, not an answer);
3. the last "the answer is N" / "answer: N" / "answer = N" whose rest of the sentence holds a number;
4. only when none of these exists, and only with ``fallback_last_number`` (off by default; the
   registered ``gsm8k_accuracy_last_number``), the last number of the completion. It is lenient on
   purpose, for base models that never state an answer: a policy can end any text with the gold
   ("Question 7 had 42 apples.", or every number up to it), so a run that trains on it can be gamed.

A statement scores 0 when it is hedged, negated, a range or several answers ("not 42", "42 or 43",
"between 42 and 50", "\\boxed{42 \\text{ or } 43}"); the fallback's sentence is held to the same
words. Numbers: thousands separators, ``$`` and units, percent, decimals, scientific notation
(``1e3``, ``1.5 \\times 10^{3}``), ``a/b`` and ``\\frac{a}{b}`` (mixed numbers too), a typographic
or spaced minus at the start of an answer (``- 10``). Comparison with the gold is exact (as
fractions; a non-integer gold also accepts a decimal within 1e-6).

Scores: 1.0 or 0.0 for every completion, whatever its text (nothing a policy writes raises); ``None``
only when the gold itself holds no number (a data error the policy cannot cause: the row cannot be
scored).

A boxed *expression* (``\\boxed{3 \\cdot 6}``, ``\\boxed{\\sqrt{324}}``) goes to math-verify, but
only when it is short and made of arithmetic that sympy evaluates in bounded time (no powers,
factorials, ``\\binom``, no number over 15 digits), so no thread ever waits on sympy. Every scan of
completion text here is linear in its length (``str.find`` / forward scanners; the few regular
expressions have no nested or overlapping repetition). The tests compare these rules with
math-verify's on the same cases and list where and why they differ.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

from knapsack_trl.tasks.gsm8k.answers import (
    HEDGE,
    FinalAnswer,
    extract_final_answer,
    extract_gsm8k_gold,
    final_answer,
    normalize,
    numbers_equal,
    parse_number,
)
from knapsack_trl.tasks.text import completion_text

__all__ = [
    "FinalAnswer",
    "extract_final_answer",
    "extract_gsm8k_gold",
    "final_answer",
    "format_reward",
    "gsm8k_accuracy_last_number_reward",
    "gsm8k_accuracy_reward",
    "make_gsm8k_reward",
    "numbers_equal",
    "parse_number",
]
_MV_MAX_CHARS = 100
_MV_SAFE = re.compile(r"[0-9.\s+\-*/()=x{},]*")  # what an expression may hold once its commands are checked
_MV_COMMANDS = {
    "frac",
    "dfrac",
    "tfrac",
    "sqrt",
    "cdot",
    "times",
    "div",
    "left",
    "right",
    "pi",
    "text",
    "mathrm",
}
_MV_MAX_DIGITS = 15


def make_gsm8k_reward(
    *, use_math_verify: bool = True, fallback_last_number: bool = False
) -> Callable[..., list[float | None]]:
    """Build the GSM8K accuracy reward ``f(completions, answer, **kwargs) -> [1.0 | 0.0, ...]``.

    ``answer`` is the gold (a raw GSM8K answer with ``#### N``, or a bare number). With
    ``use_math_verify`` (the default) boxed expressions are checked with math-verify; it is an
    optional dependency (``pip install math-verify``, or the ``rewards`` extra) and its absence raises
    ``ImportError`` at the first call, not at import. ``fallback_last_number=True`` reads the last
    number of a completion that never states a final answer (lenient, gameable: the module docstring);
    by default such a completion scores 0. The function is named ``gsm8k_accuracy``, or
    ``gsm8k_accuracy_last_number`` with the fallback, so logs tell the two apart.
    """

    def gsm8k_accuracy(
        completions: Sequence[Any], answer: Sequence[str], **kwargs: Any
    ) -> list[float | None]:
        if len(answer) != len(completions):
            raise ValueError(f"gsm8k reward: got {len(completions)} completions but {len(answer)} answers")
        verifier = _math_verify() if use_math_verify else None
        return [
            _score(_text(c), str(gold), verifier, fallback_last_number)
            for c, gold in zip(completions, answer)
        ]

    name = "gsm8k_accuracy_last_number" if fallback_last_number else "gsm8k_accuracy"
    gsm8k_accuracy.__name__ = gsm8k_accuracy.__qualname__ = name
    return gsm8k_accuracy


gsm8k_accuracy_reward = make_gsm8k_reward()
gsm8k_accuracy_last_number_reward = make_gsm8k_reward(fallback_last_number=True)


def format_reward(completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
    """1.0 when the completion states one plain number as its final answer in ``\\boxed{}`` or
    after ``####``."""
    scores: list[float | None] = []
    for completion in completions:
        found = final_answer(_text(completion), fallback_last_number=False)
        ok = found is not None and found.kind in ("boxed", "####") and found.value is not None
        scores.append(1.0 if ok else 0.0)
    return scores


format_reward.__name__ = format_reward.__qualname__ = "gsm8k_format"


def _text(completion: Any) -> str:
    """The completion's text; anything that is not text is empty (scored 0, never raised)."""
    try:
        return completion_text(completion)
    except TypeError:
        return ""


def _score(
    text: str, gold_text: str, verifier: Callable[[str, str], bool] | None, fallback: bool
) -> float | None:
    """1.0 if the completion's final answer equals the gold answer, else 0.0; None for a gold
    without a number."""
    gold_str = extract_gsm8k_gold(gold_text)
    gold = parse_number(gold_str, last=False)
    if gold is None:
        return None
    found = final_answer(text, fallback_last_number=fallback)
    if found is None:
        return 0.0
    if found.value is None:
        if found.kind == "boxed" and verifier is not None and _verifiable(found.span):
            return 1.0 if verifier(gold_str, found.span) else 0.0
        return 0.0
    return 1.0 if numbers_equal(found.value, gold) else 0.0


def _verifiable(boxed: str) -> bool:
    """Whether math-verify may see this boxed expression: short, no hedging, and only arithmetic
    whose evaluation is bounded (sympy can hang on powers, factorials or binomials of big numbers)."""
    if len(boxed) > _MV_MAX_CHARS or HEDGE.search(normalize(boxed)):
        return False
    commands = re.findall(r"\\([A-Za-z]+)", boxed)
    if any(c not in _MV_COMMANDS for c in commands):
        return False
    plain = re.sub(r"\\[A-Za-z]+", "", boxed)
    if not _MV_SAFE.fullmatch(plain) or "," in plain:
        return False
    return all(len(digits) <= _MV_MAX_DIGITS for digits in re.findall(r"\d+", plain))


def _math_verify() -> Callable[[str, str], bool]:
    """math-verify's parse + verify for one boxed expression (already vetted by ``_verifiable``)."""
    try:
        from math_verify import parse, verify
    except ImportError as err:
        raise ImportError(
            "gsm8k_accuracy_reward checks \\boxed{} expressions with math-verify, which is not installed: "
            "pip install math-verify (or, in your knapsack-trl clone, pip install -e '.[rewards]'), or build "
            "the reward with "
            "make_gsm8k_reward(use_math_verify=False)."
        ) from err

    def check(gold: str, boxed: str) -> bool:
        # math-verify's own timeouts use SIGALRM, which only the main thread may set; the vetting
        # in _verifiable is what bounds the work in every thread.
        timeout = 2 if threading.current_thread() is threading.main_thread() else None
        try:
            target = parse("\\boxed{" + boxed + "}", parsing_timeout=timeout)
            return bool(target) and verify(
                parse(gold, parsing_timeout=timeout), target, timeout_seconds=timeout
            )
        except Exception:  # math-verify failing on odd input is a miss, not a crash of the run
            return False

    return check
