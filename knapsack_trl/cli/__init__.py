"""The ``knapsack-trl`` console script: one entry point that dispatches to subcommand modules.

Subcommands are imported lazily, by module name, so ``knapsack-trl --help`` stays fast (no torch import)
and a subcommand whose module is not installed fails with a message instead of breaking the others.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Sequence
from typing import NamedTuple

from knapsack_trl import __version__


class Command(NamedTuple):
    module: str
    help: str


COMMANDS: dict[str, Command] = {
    "train": Command(
        "knapsack_trl.cli.train",
        "train with a YAML recipe: knapsack-trl train --config RECIPE.yaml [--field value ...] [--dry-run]",
    ),
    "demo": Command(
        "knapsack_trl.experiments.demo",
        "uniform vs knapsack GRPO on a tiny offline policy, on CPU in minutes; writes a report",
    ),
    "compare": Command(
        "knapsack_trl.experiments.compare",
        "uniform vs knapsack (and oracle) over several seeds, on the demo task or a recipe",
    ),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: knapsack-trl <command> [args ...]",
        "",
        "Knapsack rollout allocation for TRL's GRPO and RLOO trainers.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {cmd.help}" for name, cmd in COMMANDS.items()),
        "",
        "options:",
        "  -h, --help     show this message; `knapsack-trl <command> --help` for a command's options",
        "  --version      print the version",
        "",
        "Multi-process: accelerate launch --config_file recipes/accelerate/ddp.yaml -m knapsack_trl.train "
        "--config RECIPE.yaml",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``argv[0]`` to ``<module>.main(rest)``; returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(_usage(), file=sys.stderr)
        return 2
    if args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if args[0] == "--version":
        print(f"knapsack-trl {__version__}")
        return 0

    name, rest = args[0], args[1:]
    command = COMMANDS.get(name)
    if command is None:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        print(f"knapsack-trl: unknown command '{name}'.{hint}\n\n{_usage()}", file=sys.stderr)
        return 2

    try:
        module = importlib.import_module(command.module)
    except ModuleNotFoundError as exc:
        if exc.name != command.module:
            raise
        print(
            f"knapsack-trl: the '{name}' command is not available in this installation "
            f"(module {command.module} is missing). Update knapsack-trl or run another command.",
            file=sys.stderr,
        )
        return 1
    entry = getattr(module, "main", None)
    if entry is None:
        print(f"knapsack-trl: {command.module} has no main(argv) function.", file=sys.stderr)
        return 1
    result = entry(rest)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
