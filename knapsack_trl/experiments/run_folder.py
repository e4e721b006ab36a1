"""The output folder of ``knapsack-trl compare`` and ``demo``: a comparison that outlives its process.

A comparison of several arms over several seeds can take hours; its folder keeps what a later
invocation needs to carry on where a killed one stopped:

- ``protocol.json``, written before the first run: everything that decides a run's result (the
  experiment's settings, each arm's resolved trainer config, the evaluation), the seeds, and the code
  that wrote it. A later invocation in the folder runs only if its settings equal these; more arms or
  more seeds are the same protocol with more runs.
- ``runs/<arm>_seed<k>.json``: one finished run (its :class:`RunRecord`, with the code that made it),
  written atomically the moment the run ends. A run without its file is run again from its start.
- ``start/``: the shared start of every run (the demo's warmed-up checkpoint; a recipe's start model and
  start evaluation per seed), saved once and reused, so a run made later starts from the very weights
  and measurement the earlier runs started from.
- ``report.md``, ``results.json`` and the plots, rebuilt from every run file in the folder.

Writes go to a hidden ``.<name>.tmp-<pid>`` beside their target and are renamed into place, so a
killed process leaves either the whole file (or folder) or nothing; leftovers are removed on the next
open. A lock (``.lock``, released by the kernel even on SIGKILL) keeps two processes out of one folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from knapsack_trl import __version__
from knapsack_trl.experiments.methods import METHOD_ORDER, methods_in
from knapsack_trl.experiments.plots import PLOT_FILES
from knapsack_trl.experiments.report import RunRecord, to_json, write_report

PROTOCOL_FILE = "protocol.json"
RUNS_DIR = "runs"
START_DIR = "start"
LOCK_FILE = ".lock"
REPORT_FILES = ("report.md", "results.json", *PLOT_FILES.values())
FORMAT = 1
TMP_MARK = ".tmp-"
# Trainer-config fields that say where a run writes or which seed it is, not how it trains.
PER_RUN_FIELDS = ("output_dir", "logging_dir", "run_name", "seed", "data_seed", "hub_token")
# The code a folder's runs were made with: a difference is reported, not refused (a campaign spans
# sessions while fixes land); every run file records its own, and the report lists them.
CODE_KEYS = ("knapsack_trl", "commit", "trl", "transformers", "torch")

T = TypeVar("T")


# --------------------------------------------------------------------------- what decides a run


def _plain_value(obj: Any) -> Any:
    if isinstance(obj, enum.Enum):
        return obj.value
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return str(obj)


def plain(data: Any) -> Any:
    """``data`` as JSON gives it back (tuples as lists, enums as their values, other objects as strings),
    so a setting compares equal to itself read back from ``protocol.json``."""
    return json.loads(json.dumps(data, default=_plain_value))


def field_defaults(config: Any) -> dict[str, Any]:
    """The declared default of each field of a dataclass (or its class); fields without one are left out."""
    out = {}
    for f in dataclasses.fields(config):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return plain(out)


def trainer_settings(config: Any) -> dict[str, Any]:
    """A trainer config's resolved fields (``to_dict``), less those naming the run's folder or seed."""
    return plain({k: v for k, v in config.to_dict().items() if k not in PER_RUN_FIELDS})


def make_protocol(
    experiment: str,
    settings: Mapping[str, Any],
    arms: Mapping[str, Mapping[str, Any]],
    seeds: Sequence[int],
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The protocol of one invocation: ``settings`` shared by every run, each arm's trainer config.

    ``defaults`` (``{"settings": ..., "arms": {arm: ...}}``, shaped like what they cover): the code's
    default of each field. A field the folder's protocol lacks is no difference when it is at its default:
    the field is newer than the folder's runs, and a new field's default keeps the old behaviour. They
    serve that check only and are not written to the folder."""
    return plain(
        {
            "format": FORMAT,
            "experiment": experiment,
            "settings": settings,
            "arms": arms,
            "seeds": sorted(seeds),
            "defaults": defaults or {},
        }
    )


def fingerprint(data: Any) -> str:
    """A short hash of JSON-able ``data`` (e.g. a seed's training and held-out rows)."""
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def code_version() -> dict[str, str | None]:
    """The code runs are made with: this package's version and git commit ("+dirty" when its files differ
    from it), the libraries that shape training, Python and the machine."""
    import torch
    import transformers
    import trl

    return {
        "knapsack_trl": __version__,
        "commit": _git_commit(),
        "trl": trl.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None  # an installed package: its version is all there is
    try:
        run = {"capture_output": True, "text": True, "timeout": 20, "check": True}
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], **run).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", "knapsack_trl"],
            **run,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if changed else "")


_UNSET = object()


def _differences(old: Any, new: Any, default: Any = _UNSET, name: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted name, old, new)`` for every leaf that differs; a key on one side only is ``_UNSET`` on the
    other, and no difference when only ``new`` has it, at its ``default``."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in [*old, *(k for k in new if k not in old)]:
            below = default.get(key, _UNSET) if isinstance(default, dict) else _UNSET
            out += _differences(
                old.get(key, _UNSET), new.get(key, _UNSET), below, f"{name}.{key}" if name else key
            )
        return out
    if old == new or (old is _UNSET and default is not _UNSET and new == default):
        return []
    return [(name, old, new)]


def _show(value: Any) -> str:
    return "(not set)" if value is _UNSET else json.dumps(value)


def protocol_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Each setting of ``new`` that differs from ``old``: ``name: old -> new``. Arms are compared where both
    have them (an arm only in ``new`` is an addition); a trainer field that differs in several arms the
    same way is one line naming them."""
    defaults = new.get("defaults", {})
    lines = [
        f"{name}: {_show(a)} -> {_show(b)}"
        for name, a, b in [
            *_differences(old.get("experiment"), new.get("experiment"), name="experiment"),
            *_differences(old.get("settings"), new.get("settings"), defaults.get("settings", _UNSET)),
        ]
    ]
    by_change: dict[tuple[str, str, str], list[str]] = {}
    for arm, config in new.get("arms", {}).items():
        if arm in old.get("arms", {}):
            for name, a, b in _differences(
                old["arms"][arm], config, defaults.get("arms", {}).get(arm, _UNSET)
            ):
                by_change.setdefault((name, _show(a), _show(b)), []).append(arm)
    lines += [
        f"trainer config {name}: {a} -> {b} (arm{'s' if len(arms) > 1 else ''} {', '.join(arms)})"
        for (name, a, b), arms in by_change.items()
    ]
    return lines


# --------------------------------------------------------------------------- files


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` to ``path`` atomically: a hidden temp file beside it, flushed, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(to_json(data))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    """The parsed file, or None when there is none."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SystemExit(
            f"{path} is not valid JSON ({exc}); it was edited by hand or written by something else. "
            "Restore it, or delete it to run what it held again."
        ) from exc


def _lock(folder: Path, command: str) -> Any:
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform: one process per folder is the user's to keep
        return None
    handle = open(folder / LOCK_FILE, "a+")  # noqa: SIM115 - held open for the lock's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        pid = handle.read().strip() or "?"
        handle.close()
        raise SystemExit(
            f"{command}: another process (pid {pid}) is running a comparison in {folder}; wait for it to end, "
            "or use another --output-dir."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _remove_partial_files(folder: Path) -> None:
    """Temp files and folders a killed process left (``.<name>.tmp-<pid>``) where this module writes."""
    pattern = f".*{TMP_MARK}*"
    found = [*folder.glob(pattern), *(folder / RUNS_DIR).glob(pattern), *(folder / START_DIR).rglob(pattern)]
    for p in sorted(found, key=lambda p: len(p.parts)):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _discard(folder: Path) -> None:
    """What :class:`RunFolder` wrote (``--fresh``); anything else in the folder is left alone."""
    for name in (PROTOCOL_FILE, *REPORT_FILES):
        (folder / name).unlink(missing_ok=True)
    for name in (RUNS_DIR, START_DIR):
        shutil.rmtree(folder / name, ignore_errors=True)


# --------------------------------------------------------------------------- the folder


class RunFolder:
    """An experiment's output folder (see the module docstring): :meth:`open` to run in it (locks it,
    checks or writes the protocol), :meth:`read` to rebuild its report."""

    def __init__(
        self, path: Path, command: str, protocol: dict[str, Any], code: dict[str, Any], lock: Any = None
    ) -> None:
        self.path = path
        self.command = command
        self.protocol = protocol
        self.code = code
        self._lock = lock

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        protocol: dict[str, Any],
        *,
        command: str,
        fresh: bool = False,
        resume: bool = False,
    ) -> RunFolder:
        """Take ``path`` for running ``protocol``'s runs: with no protocol there, write it; with one, refuse
        unless the settings match, then add the new arms and seeds to it. ``fresh`` discards the folder's
        runs first; ``resume`` insists that there is a comparison to carry on."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        lock = _lock(folder, command)
        try:
            if fresh:
                _discard(folder)
            _remove_partial_files(folder)
            code = code_version()
            old = _read_protocol(folder, command)
            if old is None:
                if resume:
                    raise SystemExit(
                        f"{command}: --resume, but {folder} holds no comparison (no {PROTOCOL_FILE}); check "
                        "--output-dir, or leave out --resume to start one there."
                    )
                merged = {**{k: v for k, v in protocol.items() if k != "defaults"}, "code": code}
            else:
                _refuse_other_settings(folder, old, protocol, command)
                merged = {
                    **old,
                    "arms": {
                        **old["arms"],
                        **{a: c for a, c in protocol["arms"].items() if a not in old["arms"]},
                    },
                    "seeds": sorted({*old.get("seeds", []), *protocol["seeds"]}),
                }
                _note_other_code(old.get("code", {}), code, command)
            write_json(folder / PROTOCOL_FILE, merged)
        except BaseException:
            if lock is not None:
                lock.close()
            raise
        return cls(folder, command, merged, code, lock)

    @classmethod
    def read(cls, path: str | os.PathLike[str], protocol: dict[str, Any], *, command: str) -> RunFolder:
        """The folder as it is, for ``--report-only``: its protocol must match ``protocol``; nothing is
        written but the report, and no lock is taken (a running comparison may keep adding runs)."""
        folder = Path(path)
        old = _read_protocol(folder, command)
        if old is None:
            raise SystemExit(
                f"{command}: --report-only, but {folder} holds no comparison (no {PROTOCOL_FILE}); check "
                "--output-dir."
            )
        _refuse_other_settings(folder, old, protocol, command)
        return cls(folder, command, old, old.get("code", {}))

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the lock (the kernel also does when the process dies)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # ----------------------------------------------------------------- runs

    def run_file(self, method: str, seed: int) -> Path:
        return self.path / RUNS_DIR / f"{method}_seed{seed}.json"

    def has_run(self, method: str, seed: int) -> bool:
        return self.run_file(method, seed).is_file()

    def finished(self, method: str, seed: int) -> RunRecord | None:
        """The run's record as its file holds it, or None when it has not finished."""
        path = self.run_file(method, seed)
        return _load_run(path) if path.is_file() else None

    def save_run(self, run: RunRecord) -> RunRecord:
        """Write the finished run's file (with the code that made it) and return the record read back from
        it: the numbers every report uses, whether the run ended now or in an earlier process."""
        data = run.to_dict()
        data["extra"] = {**data.get("extra", {}), "code": self.code}
        write_json(self.run_file(run.method, run.seed), {"format": FORMAT, "run": data})
        saved = self.finished(run.method, run.seed)
        assert saved is not None
        return saved

    def runs(self) -> list[RunRecord]:
        """Every finished run in the folder, seed by seed, arms in the registry's order."""
        order = {m: i for i, m in enumerate(METHOD_ORDER)}
        records = [_load_run(p) for p in sorted((self.path / RUNS_DIR).glob("*.json"))]
        return sorted(records, key=lambda r: (r.seed, order.get(r.method, len(order)), r.method))

    def announce(self, planned: Sequence[tuple[str, int]]) -> None:
        """Say on stderr which of this invocation's runs are already in the folder."""
        done = [(m, s) for m, s in planned if self.has_run(m, s)]
        if done:
            print(
                f"{self.command}: {len(done)} of the {len(planned)} runs asked for are already in {self.path} "
                f"({', '.join(f'{m} seed {s}' for m, s in done)}): they are kept, the other "
                f"{len(planned) - len(done)} run now (--fresh discards them).",
                file=sys.stderr,
            )

    # ----------------------------------------------------------------- shared starts

    def start_path(self, *parts: str) -> Path:
        return self.path.joinpath(START_DIR, *parts)

    def refuse_lost_start(self, what: str, seed: int | None = None) -> None:
        """Stop before rebuilding a saved start (of ``seed``, or of every run) that finished runs began from:
        runs from a rebuilt one need not match theirs (on another machine the numbers differ)."""
        made = sorted(
            p.stem for p in (self.path / RUNS_DIR).glob("*.json" if seed is None else f"*_seed{seed}.json")
        )
        if made:
            raise SystemExit(
                f"{self.command}: {what} is missing from {self.path / START_DIR}, but the runs {', '.join(made)} "
                "started from it; restore it, or add --fresh to discard the folder's runs."
            )

    def build_folder(self, target: Path, build: Callable[[Path], T]) -> T:
        """``build(tmp)`` fills a hidden folder beside ``target``, which is then renamed to ``target``: a
        killed build leaves no half-written ``target``."""
        tmp = target.with_name(f".{target.name}{TMP_MARK}{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        result = build(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        return result


def _read_protocol(folder: Path, command: str) -> dict[str, Any] | None:
    protocol = read_json(folder / PROTOCOL_FILE)
    if protocol is None:
        if any((folder / RUNS_DIR).glob("*.json")):
            raise SystemExit(
                f"{command}: {folder / RUNS_DIR} holds runs but {folder} has no {PROTOCOL_FILE}, so nothing says "
                "which settings made them; use another --output-dir, or add --fresh to discard them."
            )
        return None
    if protocol.get("format") != FORMAT:
        raise SystemExit(
            f"{command}: {folder / PROTOCOL_FILE} has format {protocol.get('format')!r}, this version reads "
            f"{FORMAT}; use another --output-dir, or add --fresh to discard its runs."
        )
    return protocol


def _refuse_other_settings(folder: Path, old: dict[str, Any], new: dict[str, Any], command: str) -> None:
    differences = protocol_differences(old, new)
    if not differences:
        return
    n_runs = len(list((folder / RUNS_DIR).glob("*.json")))
    raise SystemExit(
        f"{command}: {folder} holds a comparison with other settings ({n_runs} finished run"
        f"{'' if n_runs == 1 else 's'}); runs with different settings must not share one report:\n"
        + "".join(f"  - {line}\n" for line in differences)
        + "Use a new --output-dir for these settings, or add --fresh to discard the folder's runs and start "
        "over (or go back to the folder's settings to add runs to it)."
    )


def _note_other_code(then: Mapping[str, Any], now: Mapping[str, Any], command: str) -> None:
    changed = [f"{k} {then.get(k)} -> {now.get(k)}" for k in CODE_KEYS if then.get(k) != now.get(k)]
    if changed:
        print(
            f"{command}: note: this folder's protocol was written by other code ({'; '.join(changed)}). The "
            "settings match, so its runs are kept; each run file records the code that made it and the report "
            "lists them.",
            file=sys.stderr,
        )


def _load_run(path: Path) -> RunRecord:
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT or "run" not in data:
        raise SystemExit(
            f"{path} is not a run file of this version (format {FORMAT}); move it out of the folder or delete it."
        )
    return RunRecord.from_dict(data["run"])


# --------------------------------------------------------------------------- command line and report


def add_folder_flags(parser: argparse.ArgumentParser) -> None:
    """``--resume``, ``--fresh`` and ``--report-only``, the same for every command that writes a folder."""
    parser.add_argument(
        "--resume",
        action="store_true",
        help="carry on the comparison in --output-dir, skipping its finished runs. A folder whose protocol "
        "matches is resumed without this flag too; with it, a folder holding no comparison is an error",
    )
    parser.add_argument(
        "--fresh", action="store_true", help="discard the runs already in --output-dir and start over"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild the report from the runs in --output-dir (the same settings as the command that made "
        "them); run nothing",
    )


def open_folder(ns: argparse.Namespace, protocol: dict[str, Any], command: str) -> RunFolder:
    """The output folder as ``ns``'s folder flags ask (see :func:`add_folder_flags`)."""
    chosen = [
        flag
        for flag, on in (("--resume", ns.resume), ("--fresh", ns.fresh), ("--report-only", ns.report_only))
        if on
    ]
    if len(chosen) > 1:
        raise SystemExit(f"{command}: {' and '.join(chosen)} exclude each other; pick one.")
    if ns.report_only:
        return RunFolder.read(ns.output_dir, protocol, command=command)
    return RunFolder.open(ns.output_dir, protocol, command=command, fresh=ns.fresh, resume=ns.resume)


def _seed_list(seeds: Sequence[int]) -> str:
    s = sorted(seeds)
    if len(s) > 2 and s == list(range(s[0], s[-1] + 1)):
        return f"{s[0]}-{s[-1]}"
    return ", ".join(map(str, s))


def seeds_per_arm(runs: Sequence[RunRecord]) -> str:
    """``uniform: 3 seeds (0-2), pilot: 2 seeds (0, 1)``: the finished seeds of every arm."""
    parts = []
    for m in methods_in(runs):
        seeds = [r.seed for r in runs if r.method == m]
        parts.append(f"{m}: {len(seeds)} seed{'' if len(seeds) == 1 else 's'} ({_seed_list(seeds)})")
    return ", ".join(parts)


def code_summary(runs: Sequence[RunRecord]) -> str:
    """The code versions the runs were made with, and how many runs each."""
    counts = Counter(
        ", ".join(f"{k} {code.get(k)}" for k in CODE_KEYS if code.get(k) is not None) or "not recorded"
        for code in (r.extra.get("code", {}) for r in runs)
    )
    return "; ".join(f"{label} ({n} run{'' if n == 1 else 's'})" for label, n in counts.items())


def write_folder_report(
    folder: RunFolder,
    *,
    title: str,
    settings: Mapping[str, Any],
    notes: Sequence[str] = (),
    verdict_task: str | None = None,
    target: float | None = None,
) -> tuple[dict[str, Any], list[RunRecord], list[str]]:
    """The report (:func:`.report.write_report`) of every finished run in the folder, with the seeds each
    arm has and the code that made them; returns the aggregate, the runs and the report's notes."""
    runs = folder.runs()
    if not runs:
        raise SystemExit(f"{folder.command}: no finished run in {folder.path} yet; nothing to report.")
    per_arm = {m: {r.seed for r in runs if r.method == m} for m in methods_in(runs)}
    notes = list(notes)
    if len({frozenset(s) for s in per_arm.values()}) > 1:
        notes.append(
            f"Arms have different seeds ({seeds_per_arm(runs)}): each ratio and difference to uniform pairs the "
            "seeds both arms have, and an interval needs two such seeds."
        )
    agg = write_report(
        runs,
        folder.path,
        title=title,
        settings={**settings, "seeds per arm": seeds_per_arm(runs), "code": code_summary(runs)},
        target=target,
        notes=notes,
        verdict_task=verdict_task,
    )
    return agg, runs, notes
