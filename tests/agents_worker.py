"""One rank of the two-process agent test: ``torchrun --nproc_per_node 2 tests/agents_worker.py MODEL_DIR OUT_DIR``.

Trains the warmed calculator model with ``environment_factory`` (the environment's ``calc`` is the tool)
on CPU (gloo), with rollouts permuted across the processes by token balancing, and writes what this rank
saw to ``OUT_DIR/rank{RANK}.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datasets import Dataset
from transformers import AutoModelForCausalLM

from knapsack_trl import KnapsackGRPOConfig, KnapsackGRPOTrainer
from knapsack_trl.tasks import calculator


def main(model_dir: str, out_dir: str) -> None:
    rows = [{**r, "answer": "-1"} if k % 2 else r for k, r in enumerate(calculator.calculator_rows(8))]
    args = KnapsackGRPOConfig(
        output_dir=os.path.join(out_dir, "run"),
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
        num_generations=4,  # B = 32 over P = 8: every prompt every step
        max_completion_length=32,
        max_steps=3,
        temperature=1.0,
        logging_steps=1,
        save_strategy="no",
        learning_rate=1e-3,
        seed=0,
        disable_tqdm=True,
        knapsack_n_max=12,
        knapsack_candidate_factor=1,
        knapsack_balance_tokens=True,
    )
    trainer = KnapsackGRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=calculator.build_tokenizer(),
        environment_factory=calculator.CalculatorEnv,
    )
    generations: list[dict[str, Any]] = []
    trainer.add_knapsack_listener(
        lambda event: generations.append(
            {
                "prompt_ids": event.prompt_ids,
                "rollouts": trainer.knapsack_last["rollouts"],
                "order": trainer.knapsack_last["order"].tolist(),
                "global_advantages": trainer.knapsack_last["global_advantages"].tolist(),
                "tool_calls": trainer.knapsack_last["tool_calls"].tolist(),
                "lengths": event.completion_lengths.tolist(),
                "answers": [env.answer for env in trainer.environments],
                "rewards": event.rewards.tolist(),
            }
        )
    )
    trainer.train()
    rank = trainer.accelerator.process_index
    result = {"rank": rank, "world": trainer.accelerator.num_processes, "generations": generations}
    if rank == 0:
        result["tracker"] = trainer.knapsack_allocator.tracker.state_dict()["prompts"]
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    trainer.finish()


if __name__ == "__main__":
    main(*sys.argv[1:])
