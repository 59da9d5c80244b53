"""Queued experiments share the cores: a stage inside `dvc queue start -j N` takes cores // N torch threads."""

import json
import os
import subprocess
import sys

import torch

from polyalign.threads import cores, limit_for_queue, queue_project, running_workers, share


def worker_record(project, n: int, pid: int, returncode=None) -> None:
    folder = project / ".dvc/tmp/exps/celery"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"dvc-exp-worker-{n}.json").write_text(json.dumps({"pid": pid, "returncode": returncode}))


def test_a_queued_experiment_knows_its_project_and_a_plain_run_is_not_one(tmp_path):
    run_dir = tmp_path / "proj/.dvc/tmp/exps/tmpab12cd"
    run_dir.mkdir(parents=True)
    assert queue_project(run_dir) == (tmp_path / "proj").resolve()
    assert queue_project(tmp_path / "proj") is None
    assert limit_for_queue(tmp_path / "proj") is None  # torch's own default outside a queue


def test_only_live_workers_count(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    worker_record(tmp_path, 1, pid=os.getpid())
    worker_record(tmp_path, 2, pid=os.getpid(), returncode=0)  # a worker that has exited
    worker_record(tmp_path, 3, pid=int(finished.stdout))  # a process that no longer exists
    assert running_workers(tmp_path) == 1


def test_threads_times_workers_never_exceed_the_cores():
    assert share(available=2, current=2, workers=2) == 1
    assert share(available=2, current=2, workers=1) == 2
    assert share(available=16, current=16, workers=3) == 5
    assert share(available=16, current=2, workers=2) == 2  # OMP_NUM_THREADS may have asked for fewer
    assert share(available=2, current=2, workers=5) == 1  # at least one
    for available in range(1, 9):
        for workers in range(1, 5):
            threads = share(available, available, workers)
            assert threads * workers <= available or threads == 1


def test_a_stage_in_a_queue_of_two_workers_takes_half_the_cores(tmp_path):
    run_dir = tmp_path / ".dvc/tmp/exps/tmpab12cd"
    run_dir.mkdir(parents=True)
    worker_record(tmp_path, 1, pid=os.getpid())
    worker_record(tmp_path, 2, pid=os.getpid())
    before = torch.get_num_threads()
    try:
        assert limit_for_queue(run_dir) == torch.get_num_threads() == max(1, min(before, cores() // 2))
    finally:
        torch.set_num_threads(before)
