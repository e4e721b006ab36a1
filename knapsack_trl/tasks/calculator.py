"""The tiny tool world: multiplication problems the policy answers by calling a calculator tool.

Data, tool, environment and reward side by side, all built from code (nothing from the Hub). The
character tokenizer of :mod:`.arithmetic` has no letters and no chat template, so this world has its own:
the same character-level design over digits, a few letters and five markers, with a Jinja chat template
that renders tool calls and tool results, and a ``response_template`` with which transformers'
``parse_response`` (what TRL 1.16 uses) reads a tool call back out of generated text::

    12*34=<bot><call>calc
    x:12*34</call></s><result>408</result><bot>408</s>

The user turn is the problem, ``<bot>`` opens each assistant turn (the generation prompt), a tool call is
``<call>NAME`` then one ``key:value`` line per argument then ``</call>``, the turn ends with EOS, and the
tool's reply comes back as ``<result>...</result>``. The template is prefix-preserving, as TRL's tool loop
requires. :func:`sft_rows` gives whole dialogues for a short supervised warm-up, after which a tiny model
calls the tool on most prompts and copies the result back on some: mixed rewards.
"""

from __future__ import annotations

import itertools
import random
import re
from typing import Any

from knapsack_trl.tasks.arithmetic import EOS, character_tokenizer
from knapsack_trl.tasks.text import completion_text

BOT, CALL, END_CALL, RESULT, END_RESULT = "<bot>", "<call>", "</call>", "<result>", "</result>"
MARKERS = (BOT, CALL, END_CALL, RESULT, END_RESULT)
CHARS = tuple("0123456789+-*=?: \nabcdefghijklmnopqrstuvwxyz_")

CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'assistant' -%}<bot>{{ m['content'] }}"
    "{%- for c in m.get('tool_calls') or [] -%}<call>{{ c['function']['name'] }}"
    "{%- for k, v in c['function']['arguments'].items() -%}\n{{ k }}:{{ v }}{%- endfor -%}</call>"
    "{%- endfor -%}</s>"
    "{%- elif m['role'] == 'tool' -%}<result>{{ m['content'] }}</result>"
    "{%- else -%}{{ m['content'] }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<bot>{%- endif -%}"
)

_EXPRESSION = re.compile(r"\d{1,6}(?:[+*-]\d{1,6}){0,3}")
_TOKEN = re.compile(r"\d+|[+*-]")

# transformers' new-style response template (the parser TRL 1.16 calls on transformers >= 5.13).
RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": BOT,
    "fields": {
        "tool_calls": {
            "open_pattern": r"<call>(?P<name>[a-z_]+)\n",
            "close_pattern": r"</call>",
            "repeats": True,
            "content": "kv-lines",
            "content_args": {"kv_sep": ":"},
            "transform": {"type": "function", "function": {"name": "{name}", "arguments": "{content}"}},
        },
        "content": {"close_pattern": r"</s>", "content": "text"},
    },
}


def build_tokenizer() -> Any:
    """A character-level tokenizer with the markers as single tokens, the chat template and the parser."""
    from tokenizers import AddedToken

    tokenizer = character_tokenizer((*MARKERS, *CHARS), CHAT_TEMPLATE)
    tokenizer.add_tokens([AddedToken(m, special=False, normalized=False) for m in MARKERS])
    tokenizer.response_template = RESPONSE_TEMPLATE
    return tokenizer


def calc(x: str) -> str:
    """Evaluate an arithmetic expression of integers with + - and *.

    Args:
        x: The expression, for example 12*34.
    """
    if not _EXPRESSION.fullmatch(x):
        raise ValueError(f"calc takes integers joined by + - or *, got {x!r}")
    total = 0
    for sign, term in re.findall(r"([+-])([\d*]+)", "+" + x):  # * binds tighter than + and -
        value = 1
        for factor in term.split("*"):
            value *= int(factor)
        total += value if sign == "+" else -value
    return str(total)


def problem(seed: int) -> dict[str, Any]:
    """One problem ``a*b=`` (two-digit operands) with its answer, fixed by ``seed``."""
    rng = random.Random(seed)
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return {"text": f"{a}*{b}=", "answer": str(a * b), "expression": f"{a}*{b}"}


def calculator_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` conversational rows: ``prompt`` (one user turn), ``answer``, the problem's ``expression``
    (what an exact call computes) and a stable ``prompt_id``."""
    rows = []
    for k in range(n):
        p = problem(seed * 100_003 + k)
        rows.append(
            {
                "prompt": [{"role": "user", "content": p["text"]}],
                "answer": p["answer"],
                "expression": p["expression"],
                "prompt_id": f"calc:{p['expression']}",
            }
        )
    return rows


def sft_rows(n: int, seed: int = 1) -> list[dict[str, str]]:
    """Whole dialogues for a supervised warm-up: ``prompt`` (to the first ``<bot>``) and ``answer`` (the
    rest: the tool call, the tool's result, the final reply; the warm-up adds the last EOS)."""
    rows = []
    for k in range(n):
        p = problem(seed * 7_919 + k + 10**6)
        rows.append(
            {
                "prompt": f"{p['text']}{BOT}",
                "answer": f"{CALL}calc\nx:{p['expression']}{END_CALL}{EOS}{RESULT}{p['answer']}{END_RESULT}{BOT}"
                + p["answer"],
            }
        )
    return rows


def calculator_reward(completions: list[Any], answer: list[str], **kwargs: Any) -> list[float]:
    """1.0 when the last assistant turn is exactly the answer, else 0.0 (a binary success signal)."""
    return [float(completion_text(c).strip() == str(a)) for c, a in zip(completions, answer, strict=True)]


def exact_call(calls: list[Any], answer: str, expression: str) -> float:
    """1.0 when the first call computes the problem: its argument is ``expression`` (its operands in
    any order where the operator commutes, ``34*12`` for ``12*34``) and its value is ``answer``.

    The bare answer (``408``) or the answer dressed up as a computation (``408*1``) is no call of the
    tool: it rewards knowing the number, not using the calculator.
    """
    if not calls or not _EXPRESSION.fullmatch(str(calls[0])):
        return 0.0
    same = _computation(str(calls[0])) == _computation(str(expression))
    return float(same and calc(str(calls[0])) == str(answer))


def _computation(expression: str) -> tuple[Any, ...] | None:
    """What an expression computes, up to the order of a commutative operator's operands; None for an
    expression without an operator (a number is no computation)."""
    tokens = _TOKEN.findall(expression)
    operators = set(tokens[1::2])
    if not operators:
        return None
    operands = tuple(int(t) for t in tokens[::2])
    if operators in ({"+"}, {"*"}):
        return (operators.pop(), tuple(sorted(operands)))
    return (tuple(tokens[1::2]), operands)


def exact_call_reward(
    completions: list[Any], answer: list[str], expression: list[str], **kwargs: Any
) -> list[float]:
    """1.0 when the rollout's first tool call computed its problem's ``expression`` (:func:`exact_call`)."""
    out = []
    for completion, target, problem_expression in zip(completions, answer, expression, strict=True):
        calls = [
            call["function"]["arguments"].get("x", "")
            for m in (completion if isinstance(completion, (list, tuple)) else [])
            if isinstance(m, dict)
            for call in m.get("tool_calls") or []
        ]
        out.append(exact_call(calls, target, problem_expression))
    return out


class CalculatorEnv:
    """One rollout's calculator: ``calc`` is its tool; ``get_reward`` is 1 when the rollout's call was exact.

    ``reset`` receives the row TRL hands it (its fields as keyword arguments). A row with a ``task``
    field fixes the problem (the environment owns the data: it returns the problem's text, which TRL
    appends to the user turn); a row with an ``answer`` is scored on it and its ``expression`` (a row
    without one has no call that scores); a row with neither (TRL's
    placeholder rows when no ``train_dataset`` is given) gets a problem drawn from the instance's own
    random stream, which is what leaves such rows with no stable task id.
    """

    _instances = itertools.count()

    def __init__(self) -> None:
        self._rng = random.Random(next(CalculatorEnv._instances))  # each instance its own stream
        self.expression = self.answer = ""
        self.calls: list[str] = []

    def reset(
        self, task: int | None = None, answer: str | None = None, expression: str | None = None, **row: Any
    ) -> str | None:
        self.calls = []
        if answer is not None and task is None:
            self.expression = "" if expression is None else str(expression)
            self.answer = str(answer)
            return None
        p = problem(self._rng.randrange(10**9) if task is None else int(task))
        self.expression, self.answer = p["expression"], p["answer"]
        return p["text"]

    def calc(self, x: str) -> str:
        """Evaluate an arithmetic expression of integers with + - and *.

        Args:
            x: The expression, for example 12*34.
        """
        self.calls.append(x)
        return calc(x)

    def get_reward(self) -> float:
        """1.0 when the rollout's first call computed the problem (:func:`exact_call`)."""
        return exact_call(self.calls, self.answer, self.expression)
