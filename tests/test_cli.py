"""The ``knapsack-trl`` console script: dispatch, help, errors, and ``train``'s argument parsing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from knapsack_trl import __version__, cli

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    return env


def test_console_script_is_declared_and_resolves() -> None:
    match = re.search(r'^knapsack-trl\s*=\s*"([\w.]+):(\w+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert match is not None
    module, attr = match.groups()
    assert getattr(__import__(module, fromlist=[attr]), attr) is cli.main


def test_help_lists_every_subcommand_in_a_fresh_process() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "knapsack_trl.cli", "--help"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for name in ("train", "demo", "compare"):
        assert f"\n  {name} " in result.stdout
    assert "accelerate launch" in result.stdout


def test_help_does_not_import_torch() -> None:
    code = "import sys; from knapsack_trl import cli; cli.main(['--help']); print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_no_arguments_prints_usage_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "usage: knapsack-trl <command>" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"knapsack-trl {__version__}"


def test_unknown_command_suggests_the_closest(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["trian", "--config", "x.yaml"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'trian'" in err
    assert "Did you mean 'train'?" in err


def test_missing_subcommand_module_gives_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(cli.COMMANDS, "later", cli.Command("knapsack_trl.not_written_yet", "lands later"))
    assert cli.main(["later", "--flag"]) == 1
    err = capsys.readouterr().err
    assert "'later' command is not available" in err
    assert "knapsack_trl.not_written_yet" in err


def test_dispatch_passes_the_remaining_arguments_and_the_exit_code(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    module = types.ModuleType("knapsack_trl_fake_command")

    def fake_main(argv: list[str]) -> int:
        seen.append(list(argv))
        return 7

    module.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(cli.COMMANDS, "fake", cli.Command(module.__name__, "a fake"))
    assert cli.main(["fake", "--a", "1", "pos"]) == 7
    assert seen == [["--a", "1", "pos"]]


def test_import_error_inside_a_subcommand_is_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the subcommand's own module missing is 'not available'; a broken dependency must surface."""

    class Finder:
        def find_spec(self, name: str, path: object = None, target: object = None) -> None:
            if name == "knapsack_trl_broken_command":
                raise ModuleNotFoundError("No module named 'some_dependency'", name="some_dependency")

    monkeypatch.setattr(sys, "meta_path", [Finder(), *sys.meta_path])
    monkeypatch.setitem(cli.COMMANDS, "broken", cli.Command("knapsack_trl_broken_command", "broken"))
    with pytest.raises(ModuleNotFoundError, match="some_dependency"):
        cli.main(["broken"])


def test_train_help_lists_script_config_and_model_fields(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: knapsack-trl train")
    for flag in (
        "--task",
        "--reward_funcs",
        "--dry_run",
        "--knapsack_n_max",
        "--num_generations",
        "--use_peft",
    ):
        assert flag in out


def test_building_the_train_parser_leaves_the_config_dataclasses_unchanged() -> None:
    """HfArgumentParser narrows Field.type in place (`int | None` -> `int`); other code reads those fields."""
    import dataclasses

    from knapsack_trl.recipe import make_parser
    from knapsack_trl.trainer import KnapsackGRPOConfig

    before = {f.name: f.type for f in dataclasses.fields(KnapsackGRPOConfig)}
    make_parser("grpo")
    after = {f.name: f.type for f in dataclasses.fields(KnapsackGRPOConfig)}
    assert after == before
