"""The runs `polyalign compare` reads: DVC's record of the project's experiments, as `dvc exp show --json` writes
it (or the same records read in-process), reduced to one `Run` per finished evaluation; or project folders whose
stages ran outside DVC's experiments (by hand, on other machines), each one run."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from polyalign.errors import UserError
from polyalign.params import read_params_mapping

PARAMS_FILE = "params.yaml"


@dataclass(frozen=True)
class Run:
    """One finished experiment (or the baseline commit): its params and its `reports/metrics.json`."""

    name: str
    rev: str
    timestamp: str
    params: dict
    metrics: dict

    @property
    def seed(self) -> int | None:
        return self.params.get("seed")


def read_project(root: Path) -> list[dict]:
    """What `dvc exp show --json` prints for the project at `root` (the commit checked out and its experiments),
    read through DVC's Python API in this process."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            states = repo.experiments.show()
    except DvcException as exc:
        raise UserError(f"compare: cannot read the DVC experiments of {root.resolve()}: {exc}") from None
    return json.loads(json.dumps([state.dumpd() for state in states], default=str))


def read_json(path: Path) -> list[dict]:
    """A file written by `dvc exp show --json`."""
    try:
        shown = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"compare: cannot read {path}: {exc}") from None
    if not isinstance(shown, list):
        raise UserError(f"compare: {path} is not the output of `dvc exp show --json` (a list of commits)")
    return shown


def read_folders(folders: Sequence[Path]) -> list[Run]:
    """One run per project folder: its `params.yaml` and its evaluation's `metrics.json` (under the folder's
    `paths.reports`), named by the folder as given and dated by the metrics file. A folder without either is an
    error, not a skip: it was named on purpose."""
    found = []
    for folder in folders:
        if not folder.is_dir():
            raise UserError(f"compare: --run {folder}: not a folder (give a project folder holding params.yaml)")
        params = read_params_mapping(folder / PARAMS_FILE)
        path = folder / _metrics_file(params)
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"compare: --run {folder}: {path} not found (run `polyalign evaluate` there)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"compare: --run {folder}: cannot read {path}: {exc}") from None
        if not isinstance(metrics, dict):
            raise UserError(f"compare: --run {folder}: {path} is not an evaluation's metrics (a JSON object)")
        stamp = datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds")
        found.append(Run(str(folder), str(folder.resolve()), stamp, params, metrics))
    return found


def _metrics_file(params: dict) -> str:
    reports = (params.get("paths") or {}).get("reports", "reports")
    return f"{reports.rstrip('/')}/metrics.json"


def _data(record: dict, kind: str, name: str) -> dict | None:
    entry = ((record.get("data") or {}).get(kind) or {}).get(name) or {}
    return entry.get("data")


def runs(shown: Sequence[dict]) -> tuple[list[Run], Counter]:
    """Every commit and experiment of `shown` that finished with an evaluation, and what was left out, by reason.
    The workspace is left out: it repeats a commit or an applied experiment."""
    found, skipped = [], Counter()
    for commit in shown:
        if commit.get("rev") == "workspace":
            continue
        candidates = [(commit, "success")]
        for experiment in commit.get("experiments") or []:
            state = (experiment.get("executor") or {}).get("state") or "success"
            candidates.append((experiment["revs"][0], state))
        for record, state in candidates:
            params = _data(record, "params", PARAMS_FILE)
            if state != "success":
                skipped[f"experiment {state}"] += 1
            elif record.get("error") or params is None:
                skipped["no params"] += 1
            elif (metrics := _data(record, "metrics", _metrics_file(params))) is None:
                skipped["no evaluation"] += 1
            else:
                rev = record["rev"]
                found.append(Run(record.get("name") or rev[:7], rev, str((record.get("data") or {}).get("timestamp")),
                                 params, metrics))
    return found, skipped


def select(found: list[Run], names: Sequence[str]) -> list[Run]:
    """The runs named (by experiment name, branch name or a prefix of their commit of at least 4 characters)."""
    if not names:
        return found

    def named(run: Run, name: str) -> bool:
        return name == run.name or (len(name) >= 4 and run.rev.startswith(name))

    chosen = [r for r in found if any(named(r, n) for n in names)]
    missing = [n for n in names if not any(named(r, n) for r in found)]
    if missing:
        known = ", ".join(sorted(r.name for r in found)) or "none"
        raise UserError(f"compare: no finished experiment named {', '.join(missing)} (finished: {known})")
    return chosen
