"""How a policy is measured in every experiment: per-prompt success rates from its own samples, scored by
the task's rewards, on a forked RNG stream so that measuring never changes training."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from knapsack_trl.core.tracker import is_success


def _prompt_text(tokenizer: Any, prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def _columns(rows: Sequence[dict[str, Any]], repeat: int) -> dict[str, list[Any]]:
    keys = [k for k in rows[0] if k not in ("prompt", "completion")]
    return {k: [r[k] for r in rows for _ in range(repeat)] for k in keys}


def success_rates(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    reward_funcs: Sequence[Callable[..., Any]],
    *,
    k: int = 16,
    greedy: bool = False,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    threshold: float = 0.5,
    reward_weights: Sequence[float] | None = None,
    seed: int = 0,
    batch_prompts: int = 64,
) -> np.ndarray:
    """Per-prompt success rate: share of ``k`` samples (or the one greedy answer) scoring above ``threshold``.

    Scores with the recipe's own reward functions, weighted and summed as TRL does. Sampling uses a
    forked, seeded RNG stream, so calling this during training leaves training's randomness untouched.
    """
    import torch

    weights = (
        np.ones(len(reward_funcs)) if reward_weights is None else np.asarray(reward_weights, dtype=float)
    )
    sampling = {} if greedy else {"temperature": temperature, "top_k": 0, "top_p": 1.0}
    reps = 1 if greedy else k
    out = np.zeros(len(rows))
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            for start in range(0, len(rows), batch_prompts):
                chunk = list(rows[start : start + batch_prompts])
                ids, decoded = _sample(model, tokenizer, chunk, reps, max_new_tokens, sampling)
                total = _score(chunk, ids, decoded, reps, reward_funcs, weights)
                ok = is_success(total, threshold)
                out[start : start + len(chunk)] = ok.reshape(len(chunk), reps).mean(axis=1)
    finally:
        tokenizer.padding_side = side
        if was_training:
            model.train()
    return out


def _sample(
    model: Any,
    tokenizer: Any,
    chunk: list[dict[str, Any]],
    reps: int,
    max_new_tokens: int,
    sampling: dict[str, Any],
) -> tuple[Any, list[str]]:
    """``reps`` completions per prompt of ``chunk`` (greedy when ``sampling`` is empty): ids and text."""
    device = next(model.parameters()).device
    texts = [_prompt_text(tokenizer, r["prompt"]) for r in chunk]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    gen = model.generate(
        **enc,
        max_new_tokens=max_new_tokens,
        do_sample=bool(sampling),
        num_return_sequences=reps,
        pad_token_id=tokenizer.pad_token_id,
        **sampling,
    )
    ids = gen[:, enc["input_ids"].shape[1] :]
    return ids, tokenizer.batch_decode(ids, skip_special_tokens=True)


def _score(
    chunk: list[dict[str, Any]],
    ids: Any,
    decoded: list[str],
    reps: int,
    reward_funcs: Sequence[Callable[..., Any]],
    weights: np.ndarray,
) -> np.ndarray:
    """The weighted sum of the rewards of every completion, NaN where a reward declines to score."""
    conversational = not isinstance(chunk[0]["prompt"], str)
    completions: list[Any] = (
        [[{"role": "assistant", "content": t}] for t in decoded] if conversational else decoded
    )
    prompts = [r["prompt"] for r in chunk for _ in range(reps)]
    total = np.zeros(len(decoded))
    for w, fn in zip(weights, reward_funcs):
        scores = fn(
            prompts=prompts, completions=completions, completion_ids=ids.tolist(), **_columns(chunk, reps)
        )
        total += w * np.array([np.nan if s is None else float(s) for s in scores])
    return total


def heldout_metrics(p_greedy: np.ndarray, p_sampled: np.ndarray) -> dict[str, float]:
    """Greedy accuracy, mean sampled success (the held-out reward) and the shares of p = 0, 0<p<1, p = 1."""
    return {
        "accuracy": float(p_greedy.mean()),
        "reward": float(p_sampled.mean()),
        "frac_mid": float(np.mean((p_sampled > 0) & (p_sampled < 1))),
        "frac_zero": float(np.mean(p_sampled == 0)),
        "frac_one": float(np.mean(p_sampled == 1)),
    }


def heldout_evaluator(
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    rewards: Sequence[Callable[..., Any]],
    args: Any,
    k: int,
    seed: int,
) -> Callable[[Any], dict[str, float]]:
    def evaluate(model: Any) -> dict[str, float]:
        common = {
            "max_new_tokens": int(args.max_completion_length),
            "threshold": float(args.knapsack_success_threshold),
            "reward_weights": args.reward_weights,
            "seed": seed + 1000,
        }
        greedy = success_rates(model, tokenizer, rows, rewards, greedy=True, **common)
        sampled = success_rates(
            model, tokenizer, rows, rewards, k=k, temperature=float(args.temperature), **common
        )
        return heldout_metrics(greedy, sampled)

    return evaluate


def true_rates(
    trainer: Any,
    tokenizer: Any,
    by_id: dict[str, dict[str, Any]],
    rewards: Sequence[Callable[..., Any]],
    k: int,
    max_new: int,
    threshold: float,
    seed: int,
) -> Callable[[list[str]], np.ndarray]:
    def fn(prompt_ids: list[str]) -> np.ndarray:
        return success_rates(
            trainer.model,
            tokenizer,
            [by_id[p] for p in prompt_ids],
            rewards,
            k=k,
            max_new_tokens=max_new,
            threshold=threshold,
            reward_weights=trainer.args.reward_weights,
            seed=seed + 7919 * (trainer.state.global_step + 1),
        )

    return fn


def load_policy(model_path: str, model_args: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {}
    if getattr(model_args, "dtype", None) not in (None, "auto"):
        import torch

        kwargs["dtype"] = getattr(torch, model_args.dtype)
    model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
