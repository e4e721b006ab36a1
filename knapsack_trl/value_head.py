"""The value head: predict a prompt's success rate from the policy's own view of the prompt.

The tracker only knows prompts it has seen, so in the first epoch every prompt gets the uniform
budget. The value head is a small network (linear or 2-layer MLP) over the policy backbone's pooled
hidden states of the prompt. It is trained online on the binary group outcomes the trainer observes
anyway, and its prediction becomes the prior mean of the tracker's Beta posterior: an unseen prompt
gets the head's ``p``, and a prompt's own history takes over as it accumulates (pseudo-count
``knapsack_value_head_prior_strength``).

Nothing here touches the policy's graph: features come from one ``torch.no_grad`` forward of the
backbone on prompt tokens only (no LM head, no completions), detached to float32; the head has its own
optimizer and is never a submodule of the policy, so DDP/ZeRO and the policy optimizer never see it.

Config fields the trainer reads (see :meth:`ValueHeadConfig.from_args`):

- ``knapsack_value_estimator``: ``"history"`` (tracker only), ``"value_head"`` (the head's ``p`` for
  prompts with no history) or ``"blend"`` (the head's ``p`` as every prompt's prior); see
  :func:`estimator_prior`.
- ``knapsack_value_head_type``: ``"linear"`` or ``"mlp"``.
- ``knapsack_value_head_layer``: index into ``hidden_states`` (0 = embeddings, -1 = last, post-norm).
- ``knapsack_value_head_lr``: the head's AdamW learning rate.
- ``knapsack_value_head_prior_strength``: pseudo-count ``k`` of the head's prediction in the blend
  (the tracker's ``prior_strength``; None keeps ``knapsack_prior_strength``).

Multi-process: every process builds identical parameters (seeded init on CPU, no global RNG used) and
updates them with identical full-batch steps on identical data, so they stay identical without
communication. ``features(..., shared_inputs=True)`` makes the data identical by construction (each
process computes a slice, then all-gather). :meth:`ValueHeadEstimator.fingerprint` checks it cheaply;
:meth:`ValueHeadEstimator.broadcast_from_main` repairs any drift.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

VALUE_ESTIMATORS = ("history", "value_head", "blend")
HEAD_TYPES = ("linear", "mlp")
VALUE_HEAD_FILENAME = "knapsack_value_head.pt"
METRIC_PREFIX = "knapsack/value_head/"
_STATE_VERSION = 1


@dataclass(frozen=True)
class ValueHeadConfig:
    """Settings of the head and its online training.

    Each observed batch joins a replay buffer of the last ``replay_size`` prompts (0: the batch
    alone), and ``steps_per_update`` full-batch AdamW steps run over the buffer: the head fits all
    recent evidence instead of chasing the latest batch, while old features (from an older policy)
    age out. Predictions are used once ``min_updates``
    batches have been trained on (before that :meth:`ValueHeadEstimator.predict_or_none` gives None).
    """

    head_type: str = "mlp"
    layer: int = -1
    lr: float = 1e-2
    prior_strength: float | None = None
    mlp_hidden_size: int | None = None
    steps_per_update: int = 4
    weight_decay: float = 0.01
    replay_size: int = 512
    min_updates: int = 1
    forward_batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.head_type not in HEAD_TYPES:
            raise ValueError(
                f"knapsack_value_head_type={self.head_type!r} is not known; use one of {list(HEAD_TYPES)}."
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"knapsack_value_head_lr={self.lr!r} must be a positive number.")
        if self.prior_strength is not None and not (
            math.isfinite(self.prior_strength) and self.prior_strength >= 0
        ):
            raise ValueError(
                f"knapsack_value_head_prior_strength={self.prior_strength!r} must be finite and >= 0."
            )
        if self.mlp_hidden_size is not None and self.mlp_hidden_size < 1:
            raise ValueError(f"mlp_hidden_size={self.mlp_hidden_size!r} must be >= 1 or None.")
        if self.steps_per_update < 1:
            raise ValueError(f"steps_per_update={self.steps_per_update!r} must be >= 1.")
        if self.replay_size < 0:
            raise ValueError(f"replay_size={self.replay_size!r} must be >= 0.")
        if self.min_updates < 0 or self.forward_batch_size < 1 or self.weight_decay < 0:
            raise ValueError("min_updates >= 0, forward_batch_size >= 1 and weight_decay >= 0 are required.")

    @classmethod
    def from_args(cls, args: Any, **overrides: Any) -> ValueHeadConfig:
        """Build from a trainer config: ``knapsack_value_head_<field>`` attributes, ``seed`` from ``args.seed``.

        Missing attributes keep the defaults, so a config class need only declare the fields it exposes.
        """
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = "knapsack_value_head_" + ("type" if f.name == "head_type" else f.name)
            if getattr(args, name, None) is not None:
                values[f.name] = getattr(args, name)
        if "seed" not in values and isinstance(getattr(args, "seed", None), int):
            values["seed"] = args.seed
        values.update(overrides)
        return cls(**values)

    def tracker_prior_strength(self, mode: str, default: float) -> float:
        """The tracker's pseudo-count ``k``: this config's in ``blend`` mode when set, else ``default``.

        The allocator blends through ``tracker.success_rate(ids, prior_mean=head_p)``, so the head's
        pseudo-count is the tracker's ``prior_strength``.
        """
        if mode == "blend" and self.prior_strength is not None:
            return float(self.prior_strength)
        return float(default)


class PromptValueHead(nn.Module):
    """Logit of a prompt's success rate from its pooled hidden state.

    Inputs are centred by the training features' mean and scaled by their variance averaged over
    dimensions (the pooled states of different prompts share a large common component; without it a
    small head learns slowly). One scalar scale stays sane when there are very few prompts. The last layer starts at
    zero, so an untrained head predicts exactly 0.5 for every prompt.
    """

    def __init__(self, input_dim: int, head_type: str = "mlp", hidden_size: int | None = None) -> None:
        super().__init__()
        if head_type not in HEAD_TYPES:
            raise ValueError(f"head_type={head_type!r} is not known; use one of {list(HEAD_TYPES)}.")
        self.input_dim = int(input_dim)
        self.head_type = head_type
        self.register_buffer("feature_mean", torch.zeros(self.input_dim))
        self.register_buffer("feature_var", torch.ones(self.input_dim))
        if head_type == "linear":
            self.net: nn.Module = nn.Linear(self.input_dim, 1)
        else:
            width = int(hidden_size or min(self.input_dim, 256))
            self.net = nn.Sequential(nn.Linear(self.input_dim, width), nn.GELU(), nn.Linear(width, 1))
        last = self.net if isinstance(self.net, nn.Linear) else self.net[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits, shape ``(N,)``."""
        x = (features - self.feature_mean) * torch.rsqrt(self.feature_var.mean() + 1e-6)
        return self.net(x).squeeze(-1)


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


def _no_autocast(device: torch.device) -> torch.autocast:
    """Keep the head in float32 even when the trainer runs under mixed-precision autocast."""
    return torch.autocast(device_type=device.type, enabled=False)


def _dist_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def calibration_metrics(
    predicted: np.ndarray, successes: np.ndarray, counts: np.ndarray, n_bins: int = 10
) -> dict[str, float]:
    """Rollout-weighted Brier score, log loss, mean predicted vs observed, expected calibration error.

    A group of ``n`` rollouts with ``s`` successes counts as ``n`` binary outcomes, so the Brier score
    is exact per rollout: ``(s (1-p)^2 + (n-s) p^2) / n`` summed and divided by the total.
    """
    p = np.asarray(predicted, dtype=np.float64).reshape(-1)
    s = np.asarray(successes, dtype=np.float64).reshape(-1)
    n = np.asarray(counts, dtype=np.float64).reshape(-1)
    keep = n > 0
    p, s, n = p[keep], s[keep], n[keep]
    total = n.sum()
    if total <= 0:
        return {
            "brier": math.nan,
            "log_loss": math.nan,
            "mean_pred": math.nan,
            "mean_obs": math.nan,
            "ece": math.nan,
        }
    brier = float((s * (1 - p) ** 2 + (n - s) * p**2).sum() / total)
    pc = np.clip(p, 1e-7, 1 - 1e-7)
    log_loss = float(-(s * np.log(pc) + (n - s) * np.log1p(-pc)).sum() / total)
    bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    ece = 0.0
    for b in np.unique(bins):
        sel = bins == b
        w = n[sel].sum()
        ece += abs(float((p[sel] * n[sel]).sum() - s[sel].sum())) / total if w > 0 else 0.0
    return {
        "brier": brier,
        "log_loss": log_loss,
        "mean_pred": float((p * n).sum() / total),
        "mean_obs": float(s.sum() / total),
        "ece": float(ece),
    }


class ValueHeadEstimator:
    """A :class:`PromptValueHead` with its optimizer, online training, metrics and checkpointing.

    Keep it outside the policy model (an attribute of the trainer), so the policy's optimizer,
    DDP and ZeRO never see its parameters.
    """

    def __init__(
        self, input_dim: int, config: ValueHeadConfig | None = None, device: str | torch.device = "cpu"
    ):
        self.config = config or ValueHeadConfig()
        self.input_dim = int(input_dim)
        # Seeded CPU init inside a forked RNG: identical on every process, and the policy's RNG
        # stream (sampling, dropout) is left exactly as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            self.head = PromptValueHead(self.input_dim, self.config.head_type, self.config.mlp_hidden_size)
        self.head.to(device)
        self.optimizer = torch.optim.AdamW(
            self.head.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay
        )
        self.num_updates = 0
        self.num_rollouts = 0.0
        self.num_successes = 0.0
        self._replay = self._empty_replay()

    def _empty_replay(self) -> dict[str, torch.Tensor]:
        return {
            "features": torch.zeros(0, self.input_dim, device=self.device),
            "successes": torch.zeros(0, device=self.device),
            "counts": torch.zeros(0, device=self.device),
        }

    @classmethod
    def from_model(cls, model: nn.Module, config: ValueHeadConfig | None = None) -> ValueHeadEstimator:
        """Size the head from the policy's ``config.hidden_size`` and place it on the policy's device."""
        backbone = unwrap_backbone(model)
        model_config = getattr(backbone, "config", None)
        hidden = getattr(model_config, "hidden_size", None)
        if hidden is None:
            raise ValueError(
                "the policy's config has no hidden_size; build ValueHeadEstimator(input_dim=...)."
            )
        cfg = config or ValueHeadConfig()
        layers = getattr(model_config, "num_hidden_layers", None)
        if isinstance(layers, int) and not -(layers + 1) <= cfg.layer <= layers:
            raise ValueError(
                f"knapsack_value_head_layer={cfg.layer} is out of range: the policy has {layers} layers, so "
                f"hidden_states has {layers + 1} entries (0 = embeddings, -1 = last)."
            )
        param = next(backbone.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        return cls(int(hidden), cfg, device=device)

    @property
    def device(self) -> torch.device:
        return self.head.feature_mean.device

    @property
    def ready(self) -> bool:
        """True once the head has trained on ``config.min_updates`` batches."""
        return self.num_updates >= self.config.min_updates

    def to(self, device: str | torch.device) -> ValueHeadEstimator:
        """Move the head and its optimizer state."""
        self.head.to(device)
        self._replay = {k: v.to(device) for k, v in self._replay.items()}
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and key != "step":
                    state[key] = value.to(device)
        return self

    # ----------------------------------------------------------------------------------- features
    def features(
        self,
        model: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        shared_inputs: bool = False,
    ) -> torch.Tensor:
        """Pooled hidden states of the prompts at ``config.layer``: ``(N, D)`` float32, no grad.

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
            return self._local_features(model, input_ids, attention_mask)
        per = math.ceil(n / world)
        index = torch.arange(per * world, device=input_ids.device).clamp_max(n - 1)
        local = index[rank * per : (rank + 1) * per]
        feats = self._local_features(model, input_ids[local], attention_mask[local])
        parts = [torch.empty_like(feats) for _ in range(world)]
        torch.distributed.all_gather(parts, feats.contiguous())
        return torch.cat(parts)[:n]

    def _local_features(
        self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
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
                bs = self.config.forward_batch_size
                for start in range(0, int(input_ids.shape[0]), bs):
                    ids = input_ids[start : start + bs].to(device)
                    mask = attention_mask[start : start + bs].to(device)
                    kwargs: dict[str, Any] = {"output_hidden_states": True, "use_cache": False}
                    if accepts_positions:
                        kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp_min(0)
                    result = backbone(input_ids=ids, attention_mask=mask, **kwargs)
                    hidden = result.hidden_states[self.config.layer]
                    out.append(pool_hidden_states(hidden, mask))
        finally:
            for module, training in modes:
                module.training = training
        if not out:
            return torch.zeros(0, self.input_dim, device=input_ids.device)
        return torch.cat(out).float().detach()

    # ------------------------------------------------------------------------ predict and update
    def _logits(self, features: torch.Tensor) -> torch.Tensor:
        x = features.detach().to(self.device, torch.float32)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"features must have shape (N, {self.input_dim}), got {tuple(x.shape)}.")
        return self.head(x)

    def predict(self, features: torch.Tensor) -> np.ndarray:
        """Predicted success rates, float64, one per row, clipped to [0.001, 0.999].

        Never exactly 0 or 1: only a prompt's observed history may make it certain.
        """
        self.head.eval()
        with torch.no_grad(), _no_autocast(self.device):
            p = torch.sigmoid(self._logits(features).double()).cpu().numpy()
        return np.clip(p, 1e-3, 1 - 1e-3)

    def predict_or_none(self, features: torch.Tensor) -> np.ndarray | None:
        """:meth:`predict` once :attr:`ready`, else None (the tracker's own prior is used)."""
        return self.predict(features) if self.ready else None

    def update(
        self,
        features: torch.Tensor,
        successes: Sequence[float] | np.ndarray,
        counts: Sequence[float] | np.ndarray,
    ) -> dict[str, float]:
        """Train on one batch of group outcomes; returns metrics keyed ``knapsack/value_head/*``.

        ``successes[i]`` of ``counts[i]`` rollouts of prompt ``i`` succeeded (binary success). Loss:
        binary cross-entropy of the predicted rate against ``s/n``, weighted by ``n``. Calibration
        metrics (``brier``, ``ece``, ``mean_pred`` vs ``mean_obs``, ``loss``) are taken *before* the
        steps: they score predictions on prompts the head had not trained on, the ones the allocator
        used. ``brier_constant`` scores the running mean success rate on the same rollouts (the head
        helps where ``brier < brier_constant``); ``loss_after`` is the loss on the replay buffer after
        the steps. Rows with ``counts == 0`` are ignored.
        """
        s_np = np.asarray(successes, dtype=np.float64).reshape(-1)
        n_np = np.asarray(counts, dtype=np.float64).reshape(-1)
        if s_np.shape != n_np.shape or s_np.shape[0] != features.shape[0]:
            raise ValueError(
                f"update got {features.shape[0]} feature rows, {s_np.size} successes and {n_np.size} counts."
            )
        if (n_np < 0).any() or (s_np < 0).any() or (s_np > n_np).any() or not np.isfinite(s_np).all():
            raise ValueError("update needs 0 <= successes <= counts (binary successes per group).")
        keep = n_np > 0
        constant = self.num_successes / self.num_rollouts if self.num_rollouts > 0 else 0.5
        pre = self.predict(features)
        metrics = calibration_metrics(pre, s_np, n_np)
        metrics["brier_constant"] = calibration_metrics(np.full_like(pre, constant), s_np, n_np)["brier"]
        metrics["loss"] = metrics.pop("log_loss")
        if not keep.any():
            return {METRIC_PREFIX + k: float(v) for k, v in metrics.items()}

        rows = torch.as_tensor(keep, device=self.device)
        new = {
            "features": features.detach().to(self.device, torch.float32)[rows],
            "successes": torch.as_tensor(s_np, dtype=torch.float32, device=self.device)[rows],
            "counts": torch.as_tensor(n_np, dtype=torch.float32, device=self.device)[rows],
        }
        size = max(self.config.replay_size, int(rows.sum()))
        self._replay = {k: torch.cat([self._replay[k], v])[-size:] for k, v in new.items()}
        x, n = self._replay["features"], self._replay["counts"]
        y = self._replay["successes"] / n
        with torch.no_grad():
            self.head.feature_mean.copy_(x.mean(0))
            self.head.feature_var.copy_(x.var(0, unbiased=False))
        self.head.train()
        with torch.enable_grad(), _no_autocast(self.device):
            for _ in range(self.config.steps_per_update):
                self.optimizer.zero_grad(set_to_none=True)
                loss = (
                    nn.functional.binary_cross_entropy_with_logits(self.head(x), y, reduction="none") * n
                ).sum()
                (loss / n.sum()).backward()
                self.optimizer.step()
        self.head.eval()
        with torch.no_grad(), _no_autocast(self.device):
            after = nn.functional.binary_cross_entropy_with_logits(self.head(x), y, reduction="none")
            metrics["loss_after"] = float((after * n).sum() / n.sum())
        self.num_updates += 1
        self.num_rollouts += float(n_np.sum())
        self.num_successes += float(s_np.sum())
        metrics["num_updates"] = float(self.num_updates)
        return {METRIC_PREFIX + k: float(v) for k, v in metrics.items()}

    # ----------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Head, optimizer and counters; :meth:`load_state_dict` restores them exactly."""
        return {
            "version": _STATE_VERSION,
            "config": asdict(self.config),
            "input_dim": self.input_dim,
            "head": {k: v.detach().cpu().clone() for k, v in self.head.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "num_updates": self.num_updates,
            "num_rollouts": self.num_rollouts,
            "num_successes": self.num_successes,
            "replay": {k: v.detach().cpu().clone() for k, v in self._replay.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (config included; the head is rebuilt if it differs)."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"value head state version {state.get('version')!r} is not supported.")
        config = ValueHeadConfig(**state["config"])
        if config != self.config or int(state["input_dim"]) != self.input_dim:
            fresh = ValueHeadEstimator(int(state["input_dim"]), config, device=self.device)
            self.__dict__.update(fresh.__dict__)
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.num_updates = int(state["num_updates"])
        self.num_rollouts = float(state["num_rollouts"])
        self.num_successes = float(state["num_successes"])
        self._replay = {
            k: state["replay"][k].to(self.device, torch.float32) for k in ("features", "successes", "counts")
        }

    def save(self, checkpoint_dir: str | os.PathLike[str]) -> Path:
        """Write ``<checkpoint_dir>/knapsack_value_head.pt``; call on the main process only."""
        path = Path(checkpoint_dir) / VALUE_HEAD_FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), path)
        return path

    def load(self, checkpoint_dir: str | os.PathLike[str]) -> bool:
        """Restore from ``<checkpoint_dir>/knapsack_value_head.pt`` on every process; False if absent."""
        path = Path(checkpoint_dir) / VALUE_HEAD_FILENAME
        if not path.is_file():
            return False
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))
        return True

    def fingerprint(self) -> str:
        """Hash of parameters, buffers and optimizer state: equal on all processes iff in sync."""
        digest = hashlib.sha256()
        tensors = list(self.head.state_dict().values()) + list(self._replay.values())
        for state in self.optimizer.state.values():
            tensors.extend(v for v in state.values() if isinstance(v, torch.Tensor))
        for t in tensors:
            digest.update(t.detach().cpu().contiguous().numpy().tobytes())
        digest.update(f"{self.num_updates}:{self.num_rollouts}:{self.num_successes}".encode())
        return digest.hexdigest()[:16]

    def broadcast_from_main(self) -> None:
        """Copy the main process's head, optimizer and counters to every process (no-op alone)."""
        _, world = _dist_world()
        if world == 1:
            return
        box = [self.state_dict()]
        torch.distributed.broadcast_object_list(box, src=0)
        self.load_state_dict(box[0])


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


def estimator_prior(
    mode: str, head_p: np.ndarray | None, num_observations: np.ndarray | None = None
) -> np.ndarray | None:
    """``prior_success_rate`` for ``KnapsackRolloutAllocator.allocate`` in each estimator mode (NaN = none).

    - ``history``: None; unseen prompts get the uniform budget, seen ones their history.
    - ``value_head``: the head's ``p`` for prompts with no history (``num_observations == 0``), NaN
      for the rest, which keep their history with the tracker's constant prior (hard switch).
    - ``blend``: the head's ``p`` for every prompt: the prior mean of the tracker's Beta posterior
      ``(s + k*p_head) / (n + k)``, so a prompt's own history takes over as ``n`` grows (soft switch).

    ``head_p`` None (head not ready yet) gives None in every mode.
    """
    if mode not in VALUE_ESTIMATORS:
        raise ValueError(
            f"knapsack_value_estimator={mode!r} is not known; use one of {list(VALUE_ESTIMATORS)}."
        )
    if mode == "history" or head_p is None:
        return None
    prior = np.asarray(head_p, dtype=np.float64).reshape(-1).copy()
    if mode == "value_head":
        if num_observations is None:
            raise ValueError("knapsack_value_estimator='value_head' needs num_observations (tracker.stats).")
        seen = np.asarray(num_observations, dtype=np.float64).reshape(-1) > 0
        if seen.shape != prior.shape:
            raise ValueError(f"num_observations has {seen.size} entries for {prior.size} predictions.")
        prior[seen] = np.nan
    return prior


def group_successes(
    rewards: np.ndarray | torch.Tensor, sizes: Sequence[int] | np.ndarray, threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Per-group ``(successes, counts)`` from per-rollout rewards laid out group after group.

    Binary success is ``reward > threshold`` (the tracker's rule); NaN rewards (unscorable) count in
    neither. ``sizes[i]`` consecutive rollouts belong to prompt ``i``; a group of size 0 gives (0, 0).
    """
    r = (
        rewards.detach().cpu().double().numpy()
        if isinstance(rewards, torch.Tensor)
        else np.asarray(rewards, float)
    )
    r = r.reshape(-1)
    n = np.asarray(sizes, dtype=np.int64).reshape(-1)
    if int(n.sum()) != r.size:
        raise ValueError(f"group sizes sum to {int(n.sum())} but there are {r.size} rewards.")
    group = np.repeat(np.arange(n.size), n)
    valid = ~np.isnan(r)
    counts = np.bincount(group[valid], minlength=n.size).astype(np.float64)
    successes = np.bincount(group[valid], weights=(r[valid] > threshold).astype(np.float64), minlength=n.size)
    return successes, counts
