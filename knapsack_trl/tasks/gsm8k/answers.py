"""GSM8K answers: the one number a completion states as final, and exact comparison with the gold.

The rules (the reward, :mod:`.reward`, scores with them): the last ``\\boxed{...}`` that is not inside
another box, else the last ``#### N`` (a ``#### Step 2`` heading is not an answer), else the last "the
answer is N", else (only when asked for: ``fallback_last_number``) the last number; hedged, negated, range
or multiple answers are no answer. Every scan of completion text is linear in its length
(``tests/test_redteam_text.py`` measures it on each pathological shape).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

_ANSWER_IS = re.compile(r"answer\s*(?:is|:|=)\s*:?", re.IGNORECASE)
_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+")
_EXPONENT = re.compile(r"[eE]([-+]?\d{1,3})(?![\d.])")
# No two repetitions of one character class are adjacent (``[ \t]*\{?[ \t]*`` backtracks
# quadratically over a run of spaces): each pattern here fails at most once per character it reads.
_TIMES_TEN = re.compile(r"[ \t]*(?:×|x|\*|·)[ \t]*10[ \t]*\^[ \t]*(?:\{[ \t]*)?([-+]?\d{1,3})[ \t]*\}?")
_OVER = re.compile(r"[ \t]*/[ \t]*(\d+(?:\.\d+)?)(?![\d.])")
HEDGE = re.compile(
    r"\b(?:not|no|never|none|neither|nor|or|either|between|maybe|perhaps|possibly|probably|approximately"
    r"|approx|about|around|roughly|nearly|almost|likely|unsure|unclear|guess|at least|at most|more than"
    r"|less than|fewer than|up to)\b|n't|[~≈±<>≤≥]|\+/-",
    re.IGNORECASE,
)
_CUT = re.compile(r"\n|[.!?](?=\s|$)|\b(?:because|since|as|so|which|where)\b", re.IGNORECASE)
_FRAC = "\x01"  # marks a \frac{a}{b} in normalized text: \x01a/b\x02
_FRAC_END = "\x02"
_BRACE = re.compile(r"[{}]")
_FRAC_TOKEN = re.compile(r"\x01[ \t]*(-?\d+(?:\.\d+)?)[ \t]*/[ \t]*(-?\d+(?:\.\d+)?)[ \t]*\x02")
_TEXT_COMMANDS = ("text", "textbf", "textrm", "mathrm", "mathbf", "mbox", "textit", "operatorname")
_DROP_COMMANDS = {"left": "", "right": "", ",": "", "!": "", ";": "", ":": "", " ": " ", "$": "$", "%": "%"}
_TIMES_COMMANDS = {"times": "×", "cdot": "·"}
_ABS_TOL = Fraction(1, 10**6)
_MAX_EXPONENT = 100
_MAX_NUMBER_CHARS = 1000  # a longer digit run is no answer (and int() of it costs superlinear time)
_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_LEADING = " \t*:"  # what may come before a spaced minus that starts an answer ("**Answer:** - 10")


@dataclass(frozen=True)
class FinalAnswer:
    """Where a completion states its answer (``kind``: boxed, ####, answer is, last number), the
    statement's text, and its value (None when the statement is not one plain number)."""

    kind: str
    span: str
    value: Fraction | None


def extract_gsm8k_gold(answer: str) -> str:
    """The gold number of a GSM8K answer: the text after ``####`` (or the whole string), without
    thousands separators or ``$``; e.g. ``"...\\n#### 1,450,000" -> "1450000"``."""
    text = answer.rsplit("####", 1)[-1] if "####" in answer else answer
    value = parse_number(text, last=False)
    if value is None:
        return text.strip()
    return format_number(value)


def parse_number(text: str, *, last: bool = True) -> Fraction | None:
    """A number in ``text`` (the last one, or the first with ``last=False``) as an exact fraction."""
    numbers = _numbers(normalize(text))
    if not numbers:
        return None
    return numbers[-1][0] if last else numbers[0][0]


def extract_final_answer(text: str) -> tuple[str, str] | None:
    """The statement of the final answer, ``(kind, span)`` with kind ``"boxed"``, ``"####"`` or
    ``"answer is"``; ``None`` when the completion never states one (the caller may then take its
    last number)."""
    found = _statement(text)
    return None if found is None else (found[0], found[1])


def final_answer(text: str, *, fallback_last_number: bool = False) -> FinalAnswer | None:
    """The completion's final answer as the reward reads it (see the module docstring). Without a
    statement it is None, unless ``fallback_last_number`` takes the last number instead (lenient:
    a policy can end any text with a number)."""
    found = _statement(text)
    if found is not None:
        kind, span = found
        return FinalAnswer(kind, span, _single_number(span, cut=kind != "boxed"))
    if not fallback_last_number:
        return None
    normalized = normalize(text)
    numbers = _numbers(normalized)
    if not numbers:
        return None
    value, start, end = numbers[-1]
    sentence = _sentence_around(normalized, start, end)
    return FinalAnswer("last number", sentence, None if HEDGE.search(sentence) else value)


def numbers_equal(pred: Fraction, gold: Fraction) -> bool:
    """Exact equality; for a non-integer gold also within 1e-6 (a rounded 0.333333 for 1/3).

    Integer golds (nearly all of GSM8K) are compared exactly: a relative tolerance would let
    1,450,001 pass for 1,450,000.
    """
    if pred == gold:
        return True
    return gold.denominator != 1 and abs(pred - gold) <= _ABS_TOL


def _statement(text: str) -> tuple[str, str] | None:
    """The highest-priority final-answer statement: boxed, then ``####``, then "answer is"."""
    boxed = _last_boxed(text)
    if boxed is not None:
        return "boxed", boxed
    hashes = _last_hash_answer(text)
    if hashes is not None:
        return "####", hashes
    for match in reversed(list(_ANSWER_IS.finditer(text))):
        line_end = text.find("\n", match.end())
        span = text[match.end() : len(text) if line_end < 0 else line_end].strip()
        if _numbers(normalize(span), limit=1):
            return "answer is", span
        break  # the last such phrase holds no number: the completion states no final answer here
    return None


def _last_hash_answer(text: str) -> str | None:
    """The text after the last ``####`` of the last line whose ``####`` is not a markdown heading
    (a heading's text starts with a word: ``#### Step 2``)."""
    found = None
    pos = text.find("####")
    while pos >= 0:
        line_end = text.find("\n", pos)
        line_end = len(text) if line_end < 0 else line_end
        last = text.rfind("####", pos, line_end)
        content = text[last + 4 : line_end]
        head = content.lstrip(" \t#*_")
        if head and not head[0].isalpha():
            found = content.strip()
        pos = text.find("####", line_end)
    return found


def _single_number(span: str, *, cut: bool) -> Fraction | None:
    """The one plain number a statement gives, or None (hedged, several numbers, an expression)."""
    text = normalize(span).replace("**", "")
    if cut:
        text = _cut_statement(text)
    if HEDGE.search(text):
        return None
    eq = text.rfind("=")
    if eq >= 0:
        text = text[eq + 1 :]
    numbers = _numbers(text, leading_sign=True, limit=2)
    if len(numbers) != 1:
        return None
    value, start, end = numbers[0]
    rest = text[:start] + text[end:]
    if any(ch.isdigit() or ch in "\\^!" for ch in rest):
        return None  # an expression, not a plain number: math-verify's (boxed) or nobody's
    return value


def _cut_statement(text: str) -> str:
    """A stated answer up to the end of its sentence, or to its explanation ("because ...", a
    parenthesis after the number)."""
    match = _CUT.search(text)
    if match:
        text = text[: match.start()]
    first = _NUMBER.search(text)
    paren = text.find("(", first.end()) if first else -1
    return text[:paren] if paren >= 0 else text


def _numbers(
    text: str, *, leading_sign: bool = False, limit: int | None = None
) -> list[tuple[Fraction, int, int]]:
    """Every number in normalized text (the first ``limit`` of them): ``(value, start, end)``. A sign
    counts when it touches the digits after a non-word character (``-3``, not ``8-3``), or, with
    ``leading_sign``, when only spaces separate it from the digits at the start of the text (``- 10``)."""
    found: list[tuple[Fraction, int, int]] = []
    lead = len(text) - len(text.lstrip(_LEADING)) if leading_sign else -1
    pos = 0
    frac = text.find(_FRAC)
    while True:
        if 0 <= frac < pos:
            frac = text.find(_FRAC, pos)
        match = _NUMBER.search(text, pos, frac if frac >= 0 else len(text))
        if match is None:
            if frac < 0:
                return found
            pos = _fraction_token(text, frac, found)
            if limit is not None and len(found) >= limit:
                return found
            continue
        start, end = match.span()
        value = _to_fraction(match[0])
        over = _OVER.match(text, end)
        exponent = _EXPONENT.match(text, end) or _TIMES_TEN.match(text, end)
        if over and value is not None:
            value = _fraction(match[0], over[1])
            end = over.end()
        elif exponent and value is not None:
            power = int(exponent[1])
            value = value * Fraction(10) ** power if abs(power) <= _MAX_EXPONENT else None
            end = exponent.end()
        pos = end
        if value is None:
            continue
        if _negative(text, start, lead):
            value = -value
            start = text.rfind("-", 0, start)
        found.append((value, start, end))
        if limit is not None and len(found) >= limit:
            return found


def _fraction_token(text: str, frac: int, found: list[tuple[Fraction, int, int]]) -> int:
    """Read the marked ``a/b`` at ``frac`` into ``found`` (joining a whole number just before it
    into a mixed number); return the position after it."""
    end = text.find(_FRAC_END, frac)
    after = len(text) if end < 0 else end + 1
    token = _FRAC_TOKEN.match(text, frac)
    value = _fraction(token[1], token[2]) if token else None
    if value is None:
        return after
    if found and found[-1][2] == _skip_spaces_back(text, frac) and found[-1][0].denominator == 1:
        whole, start, _ = found.pop()
        found.append((whole + value if whole >= 0 else whole - value, start, after))
    else:
        found.append((value, frac, after))
    return after


def _negative(text: str, start: int, lead: int) -> bool:
    """Whether the number at ``start`` carries a minus sign; ``lead`` (-1: no spaced sign) is where
    the text's first character other than :data:`_LEADING` stands."""
    i = start - 1
    if i >= 0 and text[i] == "$":
        i -= 1
    if i >= 0 and text[i] == "-":
        return i == 0 or not (text[i - 1].isalnum() or text[i - 1] in ".)]}")
    if lead < 0:
        return False
    j = _skip_spaces_back(text, i + 1) - 1
    return j == lead and text[j] == "-" and j < i  # spaces between, and nothing but _LEADING before


def _skip_spaces_back(text: str, pos: int) -> int:
    """The position after the last non-space character before ``pos``."""
    while pos > 0 and text[pos - 1] in " \t":
        pos -= 1
    return pos


def _to_fraction(number: str) -> Fraction | None:
    if len(number) > _MAX_NUMBER_CHARS:
        return None
    try:
        return Fraction(number.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def _fraction(num: str, den: str) -> Fraction | None:
    top, bottom = _to_fraction(num), _to_fraction(den)
    if top is None or not bottom:
        return None
    return top / bottom


def _sentence_around(text: str, start: int, end: int) -> str:
    """The sentence (or line) holding ``text[start:end]``."""
    left = max(text.rfind("\n", 0, start), text.rfind(". ", 0, start), text.rfind("? ", 0, start))
    right_candidates = [p for p in (text.find("\n", end), text.find(". ", end)) if p >= 0]
    right = min(right_candidates) if right_candidates else len(text)
    return text[left + 1 : right].strip()


def normalize(text: str) -> str:
    """LaTeX and typography an answer may carry, reduced to plain text in one forward scan:
    ``\\frac{a}{b}`` becomes a marked ``a/b``, ``\\text{...}`` its content, ``{,}`` a comma,
    ``\\times`` / ``\\cdot`` a multiplication sign; spacing commands and ``\\left`` / ``\\right``
    go. Only flat groups are rewritten: a nested one stays as written (an expression)."""
    text = text.replace("\u2212", "-").replace("{,}", ",").replace(_FRAC, " ").replace(_FRAC_END, " ")
    if "\\" not in text:
        return text
    out: list[str] = []
    pos = 0
    while True:
        slash = text.find("\\", pos)
        if slash < 0:
            out.append(text[pos:])
            return "".join(out)
        out.append(text[pos:slash])
        name_end = slash + 1
        while name_end < len(text) and text[name_end].isalpha():
            name_end += 1
        name = text[slash + 1 : name_end]
        pos = name_end
        if not name and name_end < len(text):  # a one-character command: \, \! \$ \%
            out.append(_DROP_COMMANDS.get(text[name_end], "\\" + text[name_end]))
            pos = name_end + 1
        elif name in ("frac", "dfrac", "tfrac"):
            top = _flat_group(text, name_end)
            bottom = _flat_group(text, top[1]) if top else None
            if top and bottom:
                out.append(f"{_FRAC}{top[0]}/{bottom[0]}{_FRAC_END}")
                pos = bottom[1]
            else:
                out.append(text[slash:name_end])
        elif name in _TEXT_COMMANDS:
            group = _flat_group(text, name_end)
            if group:
                out.append(f" {group[0]} ")
                pos = group[1]
            else:
                out.append(text[slash:name_end])
        elif name in _DROP_COMMANDS:
            pass
        elif name in _TIMES_COMMANDS:
            out.append(_TIMES_COMMANDS[name])
        else:
            out.append(text[slash:name_end])


def _flat_group(text: str, pos: int) -> tuple[str, int] | None:
    """A LaTeX argument at ``pos`` without nested braces: ``{...}`` (unclosed runs to the end) or one
    character; its text and the position after it. None for a nested group. The scan stops at the
    first brace after the opening one, so a run of nested commands is still read in linear time."""
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    if pos >= len(text):
        return None
    if text[pos] != "{":
        return (text[pos], pos + 1) if text[pos] not in "\\}" else None
    brace = _BRACE.search(text, pos + 1)
    if brace is None:
        return text[pos + 1 :], len(text)
    if brace[0] == "{":
        return None
    return text[pos + 1 : brace.start()], brace.end()


def _last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) that is not inside another box,
    braces balanced; an unclosed one (a truncated generation) runs to the end. A box inside a box is
    part of the outer box's content (``\\boxed{43 \\boxed{42}}`` states ``43 \\boxed{42}``, no
    number). None when the last box command has no braced argument. One forward scan: a box's
    content is read once and the scan goes on after it."""
    found = None
    pos = 0
    while (box := _BOX.search(text, pos)) is not None:
        brace = box.end()
        while brace < len(text) and text[brace].isspace():
            brace += 1
        if brace >= len(text) or text[brace] != "{":
            found, pos = None, brace
            continue
        depth, i = 0, brace
        while (mark := _BRACE.search(text, i)) is not None:
            depth += 1 if mark[0] == "{" else -1
            i = mark.end()
            if depth == 0:
                found, pos = text[brace + 1 : mark.start()], i
                break
        else:
            return text[brace + 1 :]
    return found


def format_number(value: Fraction) -> str:
    """Canonical text of a number, exact at any size: an integer, a decimal when it has a finite one
    (``2.5``, ``0.0000001``), else ``a/b``."""
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    twos = (den & -den).bit_length() - 1
    rest, fives = den >> twos, 0
    while rest % 5 == 0:
        rest, fives = rest // 5, fives + 1
    if rest != 1:
        return f"{value.numerator}/{den}"
    places = max(twos, fives)
    scaled = abs(value.numerator) * 10**places // den
    whole, fraction = divmod(scaled, 10**places)
    sign = "-" if value < 0 else ""
    return f"{sign}{whole}." + f"{fraction:0{places}d}".rstrip("0")
