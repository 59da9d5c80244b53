"""CPU threads per stage. torch gives every process all the cores, so experiments that DVC's queue runs side by
side (`dvc queue start -j N`) would each take every core, and each would run many times slower. A stage that runs
inside a queued experiment takes its share instead: the cores divided by the queue's running workers."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

EXPERIMENTS = (".dvc", "tmp", "exps")  # where DVC runs queued experiments, one temporary copy each
WORKERS = "celery"  # ... and where it keeps a record of each queue worker's process (dvc-exp-worker-<n>.json)


def cores() -> int:
    """The cores this process may run on (fewer than the machine's in a container or under taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def queue_project(cwd: Path) -> Path | None:
    """The project whose experiment queue runs in `cwd`, or None when `cwd` is no queued experiment's copy."""
    parts = cwd.resolve().parts
    for i in range(len(parts) - len(EXPERIMENTS)):
        if parts[i: i + len(EXPERIMENTS)] == EXPERIMENTS:
            return Path(*parts[:i])
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def running_workers(project: Path) -> int:
    """How many of the project's DVC queue workers are running (`dvc queue start -j N` starts N)."""
    count = 0
    for record in (project.joinpath(*EXPERIMENTS) / WORKERS).glob("dvc-exp-worker-*.json"):
        try:
            info = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if info.get("returncode") is None and isinstance(info.get("pid"), int) and _alive(info["pid"]):
            count += 1
    return count


def share(available: int, current: int, workers: int) -> int:
    """Threads for one of `workers` experiments side by side: never more than the current setting (which
    OMP_NUM_THREADS may have lowered), and never so many that threads x workers exceed the cores."""
    return max(1, min(current, available // max(1, workers)))


def limit_for_queue(cwd: Path = Path(".")) -> int | None:
    """Inside a queued experiment, set torch's threads for a stage run in `cwd` to its share of the cores and
    return them; elsewhere leave torch's default alone (None)."""
    project = queue_project(cwd)
    if project is None:
        return None
    import torch

    workers = running_workers(project)
    threads = share(cores(), torch.get_num_threads(), workers)
    torch.set_num_threads(threads)
    log.debug("queued experiment: %d worker(s) on %d core(s), %d torch thread(s) each", workers, cores(), threads)
    return threads
