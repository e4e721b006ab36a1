"""The package's layers: the pure core stays free of torch and TRL, and every public entry point still imports."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "trl", "transformers", "accelerate", "datasets", "peft")


def test_the_core_imports_no_torch_trl_or_transformers_in_a_fresh_interpreter():
    code = (
        "import sys, pkgutil, importlib, knapsack_trl.core as core\n"
        "for m in pkgutil.walk_packages(core.__path__, 'knapsack_trl.core.'):\n"
        "    importlib.import_module(m.name)\n"
        f"print(sorted(name for name in {HEAVY!r} if name in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    "module",
    [
        "knapsack_trl.train",  # accelerate launch -m knapsack_trl.train
        "knapsack_trl.cli",  # the knapsack-trl console script
        "knapsack_trl.rewards",  # the reward registry's published name
        "knapsack_trl.benchmarks.allocation",
        "knapsack_trl.benchmarks.solvers",
        "knapsack_trl.benchmarks.trainer_overhead",
        "knapsack_trl.benchmarks.value_head",
        "knapsack_trl.benchmarks.rewards",
    ],
)
def test_published_module_names_still_import(module):
    code = f"import importlib; m = importlib.import_module({module!r}); print(callable(getattr(m, 'main', None)) or bool(getattr(m, 'REWARD_FUNCTIONS', None)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


def test_public_names_resolve_lazily():
    import knapsack_trl

    for name in knapsack_trl.__all__:
        assert getattr(knapsack_trl, name) is not None
