"""The value head: predict a prompt's success rate from the policy's own view of the prompt.

The tracker only knows prompts it has seen. The value head is a small network (linear or 2-layer MLP)
over the policy backbone's pooled hidden states of the prompt (:mod:`.prompt_features`). It is trained
online on the binary group outcomes the trainer observes anyway, and its prediction becomes a prior for
the allocator (:func:`estimator_prior`): an unseen prompt gets the head's ``p``, and a prompt's own
history takes over as it accumulates. The head has its own optimizer and is never a submodule of the
policy, so DDP/ZeRO and the policy optimizer never see it.

Multi-process: every process builds identical parameters (seeded init on CPU, no global RNG used) and
updates them with identical full-batch steps on identical data (features all-gathered), so they stay
identical without communication; :meth:`ValueHeadEstimator.fingerprint` checks it cheaply.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from knapsack_trl.core.calibration import calibration_metrics
from knapsack_trl.core.errors import SettingError
from knapsack_trl.core.state import VALUE_HEAD_STATE_VERSION, check_version
from knapsack_trl.trainer.prompt_features import prompt_features, unwrap_backbone

VALUE_ESTIMATORS = ("history", "value_head", "blend")
HEAD_TYPES = ("linear", "mlp")
VALUE_HEAD_FILENAME = "knapsack_value_head.pt"
METRIC_PREFIX = "knapsack/value_head/"
RETIRED_STATE_VERSIONS = (1,)  # heads with one scalar input scale: not loaded, the head starts untrained
VARIANCE_FLOOR = 1e-2  # of the mean variance: the least variance a feature dimension is scaled by


@dataclass(frozen=True)
class ValueHeadConfig:
    """Settings of the head and its online training.

    Each observed batch joins a replay buffer of the last ``replay_size`` prompts (0: the batch
    alone), and ``steps_per_update`` full-batch AdamW steps run over the buffer: the head fits all
    recent evidence instead of chasing the latest batch, while old features (from an older policy)
    age out. Predictions are used once ``min_updates``
    batches have been trained on (before that :meth:`ValueHeadEstimator.predict_or_none` gives None).
    ``target_smoothing``: each prompt's target is ``(s + k m) / (n + k)`` with ``m`` the buffer's success
    rate, so 0 of 8 reads as "rare", not "never" (without it a head that separates its few training
    prompts drives the hard ones to the 0.001 floor).
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
    target_smoothing: float = 1.0

    def __post_init__(self) -> None:
        if self.head_type not in HEAD_TYPES:
            raise SettingError(
                f"<value_head_type>={self.head_type!r} is not known; use one of {list(HEAD_TYPES)}."
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise SettingError(f"<value_head_lr>={self.lr!r} must be a positive number.")
        if self.prior_strength is not None and not (
            math.isfinite(self.prior_strength) and self.prior_strength >= 0
        ):
            raise SettingError(
                f"<value_head_prior_strength>={self.prior_strength!r} must be finite and >= 0."
            )
        if self.mlp_hidden_size is not None and self.mlp_hidden_size < 1:
            raise ValueError(f"mlp_hidden_size={self.mlp_hidden_size!r} must be >= 1 or None.")
        if self.steps_per_update < 1:
            raise ValueError(f"steps_per_update={self.steps_per_update!r} must be >= 1.")
        if self.replay_size < 0:
            raise ValueError(f"replay_size={self.replay_size!r} must be >= 0.")
        if not (math.isfinite(self.target_smoothing) and self.target_smoothing >= 0):
            raise ValueError(f"target_smoothing={self.target_smoothing!r} must be finite and >= 0.")
        if self.min_updates < 0 or self.forward_batch_size < 1 or self.weight_decay < 0:
            raise ValueError("min_updates >= 0, forward_batch_size >= 1 and weight_decay >= 0 are required.")

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

    Inputs are standardised per dimension by the training features' mean and variance (a variance floor
    of ``VARIANCE_FLOOR`` times the mean variance keeps near-constant dimensions from blowing up), then
    divided by ``sqrt(input_dim)``, so an input has norm about 1 whatever the model's hidden size and
    activation scale. Without that a real model's 576-d states, with a few dimensions holding a quarter
    of the variance, let each AdamW step (about ``lr`` per weight) move the logits by ``lr`` times the
    input's L1 norm: a few steps on a batch of mostly failures drove every prediction to the floor. The
    last layer starts at zero, so an untrained head predicts exactly 0.5 for every prompt.
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
        var = self.feature_var + VARIANCE_FLOOR * self.feature_var.mean() + 1e-12
        x = (features - self.feature_mean) * torch.rsqrt(var * self.input_dim)
        return self.net(x).squeeze(-1)

    @property
    def output_bias(self) -> torch.Tensor:
        """The last layer's bias: the logit every prediction is shifted by."""
        last = self.net if isinstance(self.net, nn.Linear) else self.net[-1]
        return last.bias


def _no_autocast(device: torch.device) -> torch.autocast:
    """Keep the head in float32 even when the trainer runs under mixed-precision autocast."""
    return torch.autocast(device_type=device.type, enabled=False)


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
            raise SettingError(
                f"<value_head_layer>={cfg.layer} is out of range: the policy has {layers} layers, so "
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

    def features(
        self,
        model: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        shared_inputs: bool = False,
    ) -> torch.Tensor:
        """Pooled hidden states of the prompts at ``config.layer`` (:func:`prompt_features`)."""
        return prompt_features(
            model,
            input_ids,
            attention_mask,
            layer=self.config.layer,
            batch_size=self.config.forward_batch_size,
            shared_inputs=shared_inputs,
        )

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

        metrics["loss_after"] = self._fit(*self._remember(features, s_np, n_np, keep))
        self.num_updates += 1
        self.num_rollouts += float(n_np.sum())
        self.num_successes += float(s_np.sum())
        metrics["num_updates"] = float(self.num_updates)
        return {METRIC_PREFIX + k: float(v) for k, v in metrics.items()}

    def _remember(
        self, features: torch.Tensor, s_np: np.ndarray, n_np: np.ndarray, keep: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Add the batch to the replay buffer (the last ``replay_size`` prompts); the buffer's ``x, y, n``."""
        rows = torch.as_tensor(keep, device=self.device)
        new = {
            "features": features.detach().to(self.device, torch.float32)[rows],
            "successes": torch.as_tensor(s_np, dtype=torch.float32, device=self.device)[rows],
            "counts": torch.as_tensor(n_np, dtype=torch.float32, device=self.device)[rows],
        }
        size = max(self.config.replay_size, int(rows.sum()))
        self._replay = {k: torch.cat([self._replay[k], v])[-size:] for k, v in new.items()}
        x, n, successes = self._replay["features"], self._replay["counts"], self._replay["successes"]
        k = self.config.target_smoothing
        y = (successes + k * successes.sum() / n.sum()) / (n + k)
        return x, y, n

    def _fit(self, x: torch.Tensor, y: torch.Tensor, n: torch.Tensor) -> float:
        """``steps_per_update`` full-batch AdamW steps on the buffer, between two intercept fits; its loss after.

        The intercept is solved exactly (:meth:`_fit_intercept`) before and after the steps, so the
        buffer's mean prediction is its success rate: the steps only learn which prompts are easier or
        harder. With rare successes, gradient steps from 0.5 would otherwise fit the base rate through
        the weights, as fast as they move, and overshoot.
        """
        with torch.no_grad():
            self.head.feature_mean.copy_(x.mean(0))
            self.head.feature_var.copy_(x.var(0, unbiased=False))
        self._fit_intercept(x, y, n)
        self.head.train()
        with torch.enable_grad(), _no_autocast(self.device):
            for _ in range(self.config.steps_per_update):
                self.optimizer.zero_grad(set_to_none=True)
                loss = (
                    nn.functional.binary_cross_entropy_with_logits(self.head(x), y, reduction="none") * n
                ).sum()
                (loss / n.sum()).backward()
                self.optimizer.step()
        self._fit_intercept(x, y, n)
        self.head.eval()
        with torch.no_grad(), _no_autocast(self.device):
            after = nn.functional.binary_cross_entropy_with_logits(self.head(x), y, reduction="none")
            return float((after * n).sum() / n.sum())

    def _fit_intercept(self, x: torch.Tensor, y: torch.Tensor, n: torch.Tensor) -> None:
        """Shift the output bias so the rollout-weighted mean prediction on ``x`` equals the observed rate.

        Newton's method on the one-dimensional, convex logistic loss in the shift (the intercept's own
        score equation). The target keeps half a success away from 0 and from all: a buffer with no
        success still predicts a small positive rate, never a certainty.
        """
        self.head.eval()
        with torch.no_grad(), _no_autocast(self.device):
            z, w = self.head(x).double(), n.double()
            total = float(w.sum())
            target = min(max(float((y.double() * w).sum()), 0.5), total - 0.5)
            shift = 0.0
            for _ in range(50):
                p = torch.sigmoid(z + shift)
                step = (float((w * p).sum()) - target) / max(float((w * p * (1 - p)).sum()), 1e-12)
                shift -= max(min(step, 4.0), -4.0)
                if abs(step) < 1e-10:
                    break
            self.head.output_bias.add_(shift)

    # ----------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Head, optimizer and counters; :meth:`load_state_dict` restores them exactly."""
        return {
            "version": VALUE_HEAD_STATE_VERSION,
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
        check_version(state, [VALUE_HEAD_STATE_VERSION], "value head state")
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
        """Restore from ``<checkpoint_dir>/knapsack_value_head.pt`` on every process; False if absent or
        written by a head that scaled its inputs differently (it relearns faster than it could be mapped)."""
        path = Path(checkpoint_dir) / VALUE_HEAD_FILENAME
        if not path.is_file():
            return False
        state = torch.load(path, map_location=self.device, weights_only=True)
        if state.get("version") in RETIRED_STATE_VERSIONS:
            return False
        self.load_state_dict(state)
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
        raise SettingError(f"<value_estimator>={mode!r} is not known; use one of {list(VALUE_ESTIMATORS)}.")
    if mode == "history" or head_p is None:
        return None
    prior = np.asarray(head_p, dtype=np.float64).reshape(-1).copy()
    if mode == "value_head":
        if num_observations is None:
            raise ValueError("estimator_prior('value_head', ...) needs num_observations (tracker.stats).")
        seen = np.asarray(num_observations, dtype=np.float64).reshape(-1) > 0
        if seen.shape != prior.shape:
            raise ValueError(f"num_observations has {seen.size} entries for {prior.size} predictions.")
        prior[seen] = np.nan
    return prior
