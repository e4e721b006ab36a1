"""GSM8K rewards: final-answer accuracy (binary, the tracker's success signal) and answer format.

The final answer is taken, in this order, from the last ``\\boxed{...}``, the text after the last
``####``, the text after the last "answer is" / "answer:", and otherwise the last number in the
completion. Boxed answers go to math-verify first (LaTeX fractions, ``\\text{}`` units, ``{,}``
separators), then to our own parser; everything else to our parser, which handles thousands
separators, ``$`` and trailing units, percent signs, decimals, ``a/b`` and ``\\frac{a}{b}`` fractions
and negative numbers, and compares numerically with the gold answer (exactly, as fractions; a non-integer gold also
accepts a decimal rounded to 1e-6).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

from knapsack_trl.rewards.code import completion_text

_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-−])?\$?(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?:\s*/\s*(?P<den>\d+(?:\.\d+)?)(?!\.?\d))?"
)
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}|\\[dt]?frac\s*(\d)\s*(\d)")
_ANSWER_IS = re.compile(r"answer\s*(?:is|:|=)\s*:?", re.IGNORECASE)
_MV_UNSAFE = re.compile(r"\^|!|\*\*")  # powers and factorials can hang sympy: never hand them over
_MV_MAX_CHARS = 100
_ABS_TOL = Fraction(1, 10**6)


def extract_gsm8k_gold(answer: str) -> str:
    """The gold number of a GSM8K answer: the text after ``####`` (or the whole string), without
    thousands separators or ``$``; e.g. ``"...\\n#### 1,450,000" -> "1450000"``."""
    text = answer.rsplit("####", 1)[-1] if "####" in answer else answer
    value = parse_number(text, last=False)
    if value is None:
        return text.strip()
    return _format_number(value)


def parse_number(text: str, *, last: bool = True) -> Fraction | None:
    """A number in ``text`` (the last one, or the first with ``last=False``) as an exact fraction."""
    matches = list(_NUMBER.finditer(_normalize(text)))
    if not matches:
        return None
    match = matches[-1] if last else matches[0]
    try:
        value = Fraction(match["num"].replace(",", ""))
        if match["den"]:
            den = Fraction(match["den"])
            if den == 0:
                return None
            value /= den
    except (ValueError, ZeroDivisionError):
        return None
    return -value if match["sign"] else value


def extract_final_answer(text: str) -> tuple[str, str] | None:
    """Where the completion states its final answer: ``(kind, span)`` with kind ``"boxed"``,
    ``"####"`` or ``"answer is"``; ``None`` when it never says (the caller then takes the last
    number of the whole text)."""
    boxed = _last_boxed(text)
    if boxed is not None:
        return "boxed", boxed
    if "####" in text:
        return "####", text.rsplit("####", 1)[-1].strip().split("\n", 1)[0]
    matches = list(_ANSWER_IS.finditer(text))
    if matches:
        span = text[matches[-1].end() :].strip().split("\n", 1)[0]
        if parse_number(span) is not None:
            return "answer is", span
    return None


def numbers_equal(pred: Fraction, gold: Fraction) -> bool:
    """Exact equality; for a non-integer gold also within 1e-6 (a rounded 0.333333 for 1/3).

    Integer golds (nearly all of GSM8K) are compared exactly: a relative tolerance would let
    1,450,001 pass for 1,450,000.
    """
    if pred == gold:
        return True
    return gold.denominator != 1 and abs(pred - gold) <= _ABS_TOL


def make_gsm8k_reward(*, use_math_verify: bool = True) -> Callable[..., list[float | None]]:
    """Build the GSM8K accuracy reward ``f(completions, answer, **kwargs) -> [1.0 | 0.0, ...]``.

    ``answer`` is the gold (a raw GSM8K answer with ``#### N``, or a bare number). With
    ``use_math_verify`` (the default) boxed answers are checked with math-verify first; it is an
    optional dependency (``pip install 'knapsack-trl[rewards]'``) and its absence raises
    ``ImportError`` at the first call, not at import.
    """

    def gsm8k_accuracy(
        completions: Sequence[Any], answer: Sequence[str], **kwargs: Any
    ) -> list[float | None]:
        if len(answer) != len(completions):
            raise ValueError(f"gsm8k reward: got {len(completions)} completions but {len(answer)} answers")
        verifier = _math_verify() if use_math_verify else None
        return [_score(completion_text(c), str(gold), verifier) for c, gold in zip(completions, answer)]

    gsm8k_accuracy.__name__ = gsm8k_accuracy.__qualname__ = "gsm8k_accuracy"
    return gsm8k_accuracy


gsm8k_accuracy_reward = make_gsm8k_reward()


def format_reward(completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
    """1.0 when the completion states a numeric final answer in ``\\boxed{}`` or after ``####``."""
    scores: list[float | None] = []
    for completion in completions:
        found = extract_final_answer(completion_text(completion))
        ok = (
            found is not None
            and found[0] in ("boxed", "####")
            and parse_number(found[1], last=False) is not None
        )
        scores.append(1.0 if ok else 0.0)
    return scores


format_reward.__name__ = format_reward.__qualname__ = "gsm8k_format"


def _score(text: str, gold_text: str, verifier: Callable[[str, str], bool] | None) -> float:
    """1.0 if the completion's final answer equals the gold answer, else 0.0."""
    gold_str = extract_gsm8k_gold(gold_text)
    gold = parse_number(gold_str, last=False)
    found = extract_final_answer(text)
    if found is not None and found[0] == "boxed" and verifier is not None and verifier(gold_str, found[1]):
        return 1.0
    # A stated answer is read from its start; otherwise the completion's last number counts.
    pred = parse_number(found[1], last=False) if found is not None else parse_number(text, last=True)
    if pred is None:
        return 0.0
    if gold is None:
        return 1.0 if _format_number(pred) == gold_str else 0.0
    return 1.0 if numbers_equal(pred, gold) else 0.0


def _math_verify() -> Callable[[str, str], bool]:
    """math-verify's parse + verify for one boxed answer, with guards against slow inputs."""
    try:
        from math_verify import parse, verify
    except ImportError as err:
        raise ImportError(
            "gsm8k_accuracy_reward checks \\boxed{} answers with math-verify, which is not installed: "
            "pip install 'knapsack-trl[rewards]' (or math-verify), or build the reward with "
            "make_gsm8k_reward(use_math_verify=False)."
        ) from err

    def check(gold: str, boxed: str) -> bool:
        if len(boxed) > _MV_MAX_CHARS or _MV_UNSAFE.search(boxed):
            return False
        # math-verify's timeouts use SIGALRM, which only the main thread may set.
        timeout = 2 if threading.current_thread() is threading.main_thread() else None
        try:
            target = parse("\\boxed{" + boxed + "}", parsing_timeout=timeout)
            return bool(target) and verify(
                parse(gold, parsing_timeout=timeout), target, timeout_seconds=timeout
            )
        except Exception:  # math-verify failing on odd input is a miss, not a crash of the run
            return False

    return check


def _last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0 or text[start:brace].strip() not in ("\\boxed", "\\fbox"):
        return None
    depth = 0
    for i in range(brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1 : i]
    return text[brace + 1 :]  # unclosed (truncated generation): take the rest


def _normalize(text: str) -> str:
    """LaTeX and typography an answer may carry, reduced to plain numbers."""
    text = text.replace("{,}", ",").replace("\\,", "").replace("\\!", "").replace("\\$", "$")
    text = text.replace("\\%", "%").replace("\u2212", "-").replace("\\left", "").replace("\\right", "")
    text = _LATEX_FRAC.sub(lambda m: f"({m[1] or m[3]}/{m[2] or m[4]})", text)
    return re.sub(r"\\text\{([^{}]*)\}", r" \1", text)


def _format_number(value: Fraction) -> str:
    """Canonical text of a number: an integer, or a decimal when it has a finite one."""
    if value.denominator == 1:
        return str(value.numerator)
    as_float = float(value)
    return repr(as_float) if Fraction(as_float) == value else f"{value.numerator}/{value.denominator}"
