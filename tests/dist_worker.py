"""One rank of the two-process test: ``torchrun --nproc_per_node 2 tests/dist_worker.py MODEL_DIR OUT_DIR [grpo|rloo|grpo-blend|grpo-pilot|rloo-pilot]``.

Trains the tiny model with knapsack allocation on CPU (gloo) and writes what this rank saw to
``OUT_DIR/rank{RANK}.json``: every allocation, its local and the global advantages, and a finished flag.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers import REWARDS
from transformers import AutoModelForCausalLM, AutoTokenizer

from knapsack_trl import (
    KnapsackGRPOConfig,
    KnapsackGRPOTrainer,
    KnapsackRLOOConfig,
    KnapsackRLOOTrainer,
)
from knapsack_trl.tasks.arithmetic import arithmetic_dataset


def main(model_dir: str, out_dir: str, kind: str = "grpo") -> None:
    config_cls, trainer_cls = (
        (KnapsackGRPOConfig, KnapsackGRPOTrainer)
        if kind.startswith("grpo")
        else (KnapsackRLOOConfig, KnapsackRLOOTrainer)
    )
    args = config_cls(
        output_dir=os.path.join(out_dir, "run"),
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
        num_generations=4,
        max_completion_length=8,
        max_steps=4,
        logging_steps=1,
        save_strategy="no",
        learning_rate=1e-3,
        seed=0,
        disable_tqdm=True,
        knapsack_n_max=12,
        knapsack_value_estimator="blend" if kind.endswith("blend") else "history",
        knapsack_pilot_rollouts=2 if kind.endswith("pilot") else 0,
        knapsack_candidate_factor=2 if kind.endswith("candidates") else 1,
    )
    trainer = trainer_cls(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        reward_funcs=REWARDS["difficulty"],
        args=args,
        # P = 32 / 4 = 8: every prompt every step (16 candidates with c = 2)
        train_dataset=arithmetic_dataset(16 if kind.endswith("candidates") else 8, digits=(1, 2, 3)),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
    )
    generations: list[dict[str, Any]] = []
    original = trainer._generate_and_score_completions

    def record(inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = original(inputs)
        last = trainer.knapsack_last
        generations.append(
            {
                "step": last["step"],
                "prompt_ids": last["prompt_ids"],
                "rollouts": last["rollouts"],
                "order": last["order"].tolist(),
                "local_advantages": output["advantages"].tolist(),
                "global_advantages": last["global_advantages"].tolist(),
                "second_round_rollouts": trainer._metrics["train"]["knapsack/second_round_rollouts"][-1]
                if args.knapsack_pilot_rollouts
                else None,
            }
        )
        return output

    trainer._generate_and_score_completions = record
    trainer.train()
    rank = trainer.accelerator.process_index
    result = {
        "rank": rank,
        "world": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "generations": generations,
        "finished": trainer.state.global_step == args.max_steps,
        "value_head": None
        if trainer.knapsack_value_head is None
        else trainer.knapsack_value_head.fingerprint(),
    }
    for g in generations:
        print(f"[rank {rank}] step {g['step']} rollouts {g['rollouts']}", flush=True)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    trainer.finish()  # waits for every process before tearing the group down (a gloo exit deadlock otherwise)


if __name__ == "__main__":
    main(*sys.argv[1:])
