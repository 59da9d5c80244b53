"""Faults at the CLI boundary: a corrupt or truncated file, a full disk, an unreadable parameters file, a seed
NumPy refuses, an unexpected exception. Each ends in one message naming the file and the command that writes
it again (exit 2; an unexpected exception: exit 1), never a traceback unless --debug asks for one."""

import errno
import os
import pathlib
import subprocess

import numpy as np
import pytest
from lightning.fabric.utilities.cloud_io import _load as load_checkpoint
from typer.testing import CliRunner

from polyalign.cli import app
from polyalign.errors import describe
from polyalign.params import load_params
from polyalign.stages import init as init_stage
from sft_project import copy_project, initialised_project

runner = CliRunner()


@pytest.fixture(scope="module")
def base_project(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_errors")
    initialised_project(root)
    return root


@pytest.fixture
def project(base_project, tmp_path, monkeypatch):
    root = copy_project(base_project, tmp_path / "p")
    monkeypatch.chdir(root)
    return root


def snapshot(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def fails(args, code=2, **kwargs):
    result = runner.invoke(app, args, **kwargs)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return " ".join(result.output.split())  # rich wraps long lines


def test_a_params_file_that_is_a_folder_or_not_utf8_is_named(in_tmp):
    (in_tmp / "folder").mkdir()
    assert "--params folder: is a folder" in fails(["params", "--params", "folder"])
    (in_tmp / "latin1.yaml").write_bytes("seed: 42\nlogging:\n  level: d\xe9bug\n".encode("latin-1"))
    assert "latin1.yaml: line 3 is not valid UTF-8 (byte 0xe9)" in fails(["params", "--params", "latin1.yaml"])


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_a_seed_numpy_refuses_is_refused_before_any_work(in_tmp, seed):
    with pytest.raises(ValueError):
        np.random.seed(seed)
    assert f"seed = {seed}" in fails(["params", "--set", f"seed={seed}"])
    np.random.seed(2**32 - 1)
    assert load_params(None, [f"seed={2**32 - 1}"]).seed == 2**32 - 1


def truncate(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def test_a_corrupt_parquet_file_names_it_and_the_stage_that_rewrites_it(project):
    truncate(project / "data/buckets/train.parquet")
    before = snapshot(project)
    out = fails(["init"])
    assert "data/buckets/train.parquet is corrupt or unreadable" in out and "rerun `polyalign bucketize`" in out
    assert snapshot(project) == before
    truncate(project / "data/prepared/val.parquet")
    before = snapshot(project)
    out = fails(["bucketize"])
    assert "data/prepared/val.parquet" in out and "rerun `polyalign prepare`" in out
    assert snapshot(project) == before


def test_a_corrupt_checkpoint_names_it_and_says_to_start_over(project):
    ckpt = project / "checkpoints/sft/bucket/last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"not a checkpoint" * 64)
    try:
        load_checkpoint(str(ckpt), weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever torch raises for it (a KeyError for this one)
        message = describe(exc)
    assert message.startswith("checkpoints/sft/bucket/last.ckpt is corrupt or unreadable")
    assert message.endswith("rerun `polyalign sft --variant bucket` without --resume")
    out = fails(["sft", "--variant", "bucket", "--resume"])
    assert "checkpoints/sft/bucket/last.ckpt" in out and "without --resume" in out


def test_a_full_disk_names_the_output_and_leaves_the_previous_one(project, monkeypatch):
    before = snapshot(project)
    write_text = pathlib.Path.write_text

    def full(self, *args, **kwargs):  # what the file system answers when the disk is full
        if self.name == "manifest.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", full)
    out = fails(["init"])
    assert "the disk is full (no space left on device) while writing models/base/manifest.json" in out
    assert snapshot(project) == before and not [p for p in project.rglob("*.tmp")]


def test_a_really_full_disk_during_a_model_save(project, tmp_path):
    """The same on a real 64 KiB file system (needs root to mount it; skipped otherwise): safetensors reports
    the full disk in its own exception."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                                           check=False, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        out = fails(["init", "--set", f"paths.models={disk}"])
        assert f"the disk is full (no space left on device) while writing {disk}/base/model.safetensors" in out
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(project, monkeypatch):
    def bug(params, root=None):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(init_stage, "run", bug)
    out = fails(["init"], code=1)
    assert "unexpected ZeroDivisionError: division by zero" in out and "polyalign --debug" in out
    for args, env in ((["--debug", "init"], {}), (["init"], {"POLYALIGN_DEBUG": "1"})):
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 1 and "Traceback" in result.output and "ZeroDivisionError" in result.output
    shown = runner.invoke(app, ["--debug", "params", "--set", "seed=-1"])  # a user error keeps its status
    assert shown.exit_code == 2 and "Traceback" in shown.output and "seed = -1" in shown.output
