"""The policy's own view of a prompt: pooled hidden states from one no-grad forward, shared across processes.

What the value head reads. Nothing here touches the policy's graph: one ``torch.no_grad`` forward of the
backbone on prompt tokens only (no LM head, no completions), in eval mode (restored after), detached to
float32, with prompts tokenized as TRL tokenizes them.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def pool_hidden_states(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over non-pad positions: ``(N, T, D), (N, T) -> (N, D)`` float32, detached.

    Reusable on hidden states from a forward that already happens.
    """
    h = hidden_states.detach().float()
    if attention_mask is None:
        return h.mean(dim=1)
    mask = attention_mask.to(h.device, dtype=h.dtype).unsqueeze(-1)
    return (h * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


def unwrap_backbone(model: nn.Module) -> nn.Module:
    """The decoder (no LM head) to run for features, through DDP/DeepSpeed and PEFT wrappers.

    DDP and DeepSpeed engines expose the real model as ``.module``. A PEFT model's
    ``get_base_model()`` is the transformers model with the adapters injected in place, so the
    adapted weights are used as they are. ``base_model`` of a transformers model is its decoder.
    """
    seen = 0
    while hasattr(model, "module") and isinstance(model.module, nn.Module) and seen < 4:
        model = model.module
        seen += 1
    if hasattr(model, "get_base_model") and callable(model.get_base_model):
        model = model.get_base_model()
    backbone = getattr(model, "base_model", model)
    return backbone if isinstance(backbone, nn.Module) else model


def _dist_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def prompt_features(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    layer: int = -1,
    batch_size: int = 64,
    shared_inputs: bool = False,
) -> torch.Tensor:
    """Pooled hidden states of the prompts at ``layer``: ``(N, D)`` float32, no grad.

    One forward of the backbone (no LM head) on prompt tokens only, under ``torch.no_grad`` and
    in eval mode (restored after), with position ids from the mask so left padding does not
    change a prompt's features. ``shared_inputs=True`` when every process passes the same rows:
    each computes its slice and the slices are all-gathered, so all processes get identical
    features (and under ZeRO-3 all of them take part in the forward, as they must).
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    rank, world = _dist_world()
    n = int(input_ids.shape[0])
    if not shared_inputs or world == 1 or n == 0:
        return _local_features(model, input_ids, attention_mask, layer, batch_size)
    per = math.ceil(n / world)
    index = torch.arange(per * world, device=input_ids.device).clamp_max(n - 1)
    local = index[rank * per : (rank + 1) * per]
    feats = _local_features(model, input_ids[local], attention_mask[local], layer, batch_size)
    parts = [torch.empty_like(feats) for _ in range(world)]
    torch.distributed.all_gather(parts, feats.contiguous())
    return torch.cat(parts)[:n]


def _local_features(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, layer: int, batch_size: int
) -> torch.Tensor:
    backbone = unwrap_backbone(model)
    modes = [(m, m.training) for m in backbone.modules()]
    accepts_positions = "position_ids" in inspect.signature(backbone.forward).parameters
    param = next(backbone.parameters(), None)
    device = param.device if param is not None else input_ids.device
    out = []
    try:
        backbone.eval()
        with torch.no_grad():
            bs = batch_size
            for start in range(0, int(input_ids.shape[0]), bs):
                ids = input_ids[start : start + bs].to(device)
                mask = attention_mask[start : start + bs].to(device)
                kwargs: dict[str, Any] = {"output_hidden_states": True, "use_cache": False}
                if accepts_positions:
                    kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp_min(0)
                result = backbone(input_ids=ids, attention_mask=mask, **kwargs)
                hidden = result.hidden_states[layer]
                out.append(pool_hidden_states(hidden, mask))
    finally:
        for module, training in modes:
            module.training = training
    if not out:
        width = int(getattr(getattr(backbone, "config", None), "hidden_size", 0) or 0)
        return torch.zeros(0, width, device=input_ids.device)
    return torch.cat(out).float().detach()


def pad_prompt_ids(
    prompt_ids: Sequence[Sequence[int]], pad_token_id: int = 0, device: str | torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists (e.g. the trainer's ``_tokenize_prompts`` output) to ``(ids, mask)``."""
    width = max((len(p) for p in prompt_ids), default=0)
    ids = torch.full((len(prompt_ids), width), int(pad_token_id), dtype=torch.long)
    mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for i, p in enumerate(prompt_ids):
        if len(p):
            ids[i, width - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
            mask[i, width - len(p) :] = 1
    if device is not None:
        ids, mask = ids.to(device), mask.to(device)
    return ids, mask


def tokenize_prompts(
    tokenizer: Any,
    prompts: Sequence[str | list[dict[str, Any]]],
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of text or conversational prompts, tokenized as TRL does.

    TRL's rule (``GRPOTrainer._tokenize_prompts``): conversations through the chat template with the
    generation prompt, text through the tokenizer with its default special tokens. A trainer with
    tools or chat-template kwargs should pad its own ``_tokenize_prompts`` output with
    :func:`pad_prompt_ids` instead, so the head sees exactly the tokens the policy does.
    """
    if prompts and not isinstance(prompts[0], str):
        out = tokenizer.apply_chat_template(
            conversation=list(prompts), add_generation_prompt=True, tokenize=True, return_dict=True
        )
    else:
        out = tokenizer(text=list(prompts))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return pad_prompt_ids(out["input_ids"], pad, device)
