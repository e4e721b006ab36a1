"""What a recipe holds besides the trainer's and the model's configs: task, data, rewards, trainer type."""

from __future__ import annotations

from dataclasses import dataclass, field

TASKS = ("gsm8k", "humaneval", "tiny_arithmetic", "tiny_calculator", "chat_arithmetic", "generic")
TRAINER_TYPES = ("grpo", "rloo")
PROG = "knapsack-trl train"


class RecipeError(ValueError):
    """A problem with a recipe that its author can fix; the message names the field and the fix."""


@dataclass
class KnapsackScriptArguments:
    """Data, rewards and trainer choice. The dataset fields mirror ``trl.ScriptArguments``."""

    task: str = field(
        default="generic",
        metadata={
            "help": "Dataset loader: `gsm8k` and `humaneval` (knapsack_trl.tasks), `tiny_arithmetic` (generated "
            "offline, knapsack_trl.tasks.arithmetic), `chat_arithmetic` (chat-format arithmetic for instruct models, "
            "generated offline, knapsack_trl.tasks.chat_arithmetic) or `generic` (any dataset with a `prompt` column: hub name, local "
            "file or saved folder).",
            "choices": list(TASKS),
        },
    )
    trainer_type: str = field(
        default="grpo",
        metadata={
            "help": "`grpo` (KnapsackGRPOTrainer, KnapsackGRPOConfig fields) or `rloo` (KnapsackRLOOTrainer, "
            "KnapsackRLOOConfig fields).",
            "choices": list(TRAINER_TYPES),
        },
    )
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={
            "help": "Reward functions: names from knapsack_trl.tasks.registry.REWARD_FUNCTIONS or dotted import paths "
            "(`my_pkg.rewards.my_reward`, imported with the working directory on sys.path)."
        },
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset name, or a local path: a .json/.jsonl/.csv/.parquet file or a folder written by "
            "`Dataset.save_to_disk`. The gsm8k/humaneval loaders use their packaged data when it is unset. A "
            "name that looks like a path (starts with / . ~, has two /, or a data-file suffix) must exist; the "
            "generated tasks (tiny_arithmetic, tiny_calculator, chat_arithmetic) take none."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name (hub)."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str = field(
        default="test",
        metadata={"help": "Split to evaluate on (only with an eval_strategy other than `no`)."},
    )
    dataset_num_rows: int | None = field(
        default=None,
        metadata={
            "help": "Keep only the first N rows of the train split (the test split is not cut; tiny_arithmetic / "
            "chat_arithmetic: generate N problems per split; default 64)."
        },
    )
    dataset_test_fraction: float = field(
        default=0.1,
        metadata={
            "help": "A single local file (.json/.jsonl/.csv/.parquet, also gzipped) has no splits: this fraction "
            "of its rows (at least 1) is the test split (dataset_test_split), drawn with the recipe's seed, and "
            "the train split is the rest. 0: train on the whole file (no test split)."
        },
    )
    dataset_prompt_column: str = field(
        default="prompt",
        metadata={"help": "Column holding the prompt (renamed to `prompt`, which TRL reads), for `generic`."},
    )
    dataset_conversational: bool | None = field(
        default=None,
        metadata={
            "help": "gsm8k/humaneval: chat-format prompts (true, for instruct models) or plain text (false, for "
            "base models). Unset: the loader's default (gsm8k chat, humaneval plain code)."
        },
    )
    system_prompt: str | None = field(
        default=None,
        metadata={"help": "gsm8k/humaneval/chat_arithmetic: a system message for chat-format prompts."},
    )
    instruction: str | None = field(
        default=None,
        metadata={
            "help": "gsm8k/chat_arithmetic: the instruction after each question (gsm8k default: step by step, the "
            "answer in \\boxed{}; chat_arithmetic default: 'Reply with the number only, as 'Answer: "
            "<number>'.'). An empty string asks the bare question. Unset: the task's default."
        },
    )
    tools: list[str] | None = field(
        default=None,
        metadata={
            "help": "grpo only: tool functions the policy may call, as dotted import paths (TRL's `tools=`; the chat "
            "template must render tool calls). See docs/agents.md."
        },
    )
    environment_factory: str | None = field(
        default=None,
        metadata={
            "help": "grpo only: dotted path of an environment class or factory (TRL's `environment_factory=`)."
        },
    )
    rollout_func: str | None = field(
        default=None,
        metadata={"help": "grpo only: dotted path of a rollout function (TRL's `rollout_func=`)."},
    )
    dry_run: bool = field(
        default=False,
        metadata={
            "help": "Validate the recipe (fields, budget, rewards, local dataset columns), print the resolved "
            "recipe and exit without loading a model (also `--dry-run`).",
        },
    )

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise RecipeError(f"task={self.task!r} is not known: use one of {', '.join(TASKS)}.")
        if self.trainer_type not in TRAINER_TYPES:
            raise RecipeError(
                f"trainer_type={self.trainer_type!r} is not known: use one of {', '.join(TRAINER_TYPES)}."
            )
        if isinstance(self.reward_funcs, str):
            self.reward_funcs = [self.reward_funcs]
        if isinstance(self.tools, str):
            self.tools = [self.tools]
        if not 0 <= self.dataset_test_fraction < 1:
            raise RecipeError(
                f"dataset_test_fraction={self.dataset_test_fraction} must be in [0, 1): the share of a single "
                "local file held out as the test split (0: none)."
            )
        if self.dataset_num_rows is not None and self.dataset_num_rows < 1:
            raise RecipeError(f"dataset_num_rows={self.dataset_num_rows} must be a positive number of rows.")
