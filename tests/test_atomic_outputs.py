"""Outputs are strict JSON, and a stage's outputs replace the previous ones all together or not at all."""

import json
import math
import shutil

import numpy as np
import pytest

from polyalign.io import atomic_outputs, write_json, write_text
from polyalign.params import load_params
from polyalign.stages import bucketize, prepare


def reject_constant(name):
    raise AssertionError(f"{name} is not JSON")


def test_write_json_writes_null_for_nan_and_infinities(tmp_path):
    path = tmp_path / "report.json"
    write_json(path, {"val_loss": float("nan"), "best": math.inf, "worst": -math.inf, "ok": 0.5,
                      "per_bucket": {"a": np.float32("nan"), "b": np.array([1.5, np.nan])}, "pair": (1, np.inf)})
    text = path.read_text(encoding="utf-8")
    assert json.loads(text, parse_constant=reject_constant) == {
        "val_loss": None, "best": None, "worst": None, "ok": 0.5, "per_bucket": {"a": None, "b": [1.5, None]},
        "pair": [1, None]}


def snapshot(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def previous_outputs(root):
    (root / "data").mkdir()
    (root / "data/old.txt").write_text("old folder file")
    write_text(root / "a.json", "old a")
    return snapshot(root)


def test_atomic_outputs_replace_a_folder_and_files_together(tmp_path):
    previous_outputs(tmp_path)
    with atomic_outputs() as out:
        folder = out.directory(tmp_path / "data")
        (folder / "new.txt").write_text("new folder file")
        write_text(out.file(tmp_path / "a.json"), "new a")
        write_json(out.file(tmp_path / "sub" / "b.json"), {"b": 1})
        assert not (tmp_path / "sub/b.json").exists() and (tmp_path / "a.json").read_text() == "old a"
    assert snapshot(tmp_path) == {"a.json": b"new a", "data/new.txt": b"new folder file",
                                  "sub/b.json": b'{\n  "b": 1\n}\n'}


def test_an_error_before_the_end_leaves_every_previous_output_and_no_temporary_path(tmp_path):
    before = previous_outputs(tmp_path)
    with pytest.raises(RuntimeError), atomic_outputs() as out:
        (out.directory(tmp_path / "data") / "new.txt").write_text("new")
        write_text(out.file(tmp_path / "a.json"), "new a")
        raise RuntimeError("the stage fails after writing some outputs")
    assert snapshot(tmp_path) == before


def test_a_failed_rename_puts_back_the_outputs_already_moved(tmp_path):
    before = previous_outputs(tmp_path)
    with pytest.raises(FileNotFoundError), atomic_outputs() as out:
        (out.directory(tmp_path / "data") / "new.txt").write_text("new")
        write_text(out.file(tmp_path / "a.json"), "new a")
        out.file(tmp_path / "c.json").unlink()  # the last rename will find nothing to move
    assert snapshot(tmp_path) == before


QUIET = ["logging.progress=false"]


def test_prepare_replaces_its_outputs_as_a_whole(tmp_path):
    """A prepare run that fails while writing its reports keeps the previous data/prepared too."""
    params = load_params(None, ["data.sources=[{kind: chatterbot, languages: [english]}]", *QUIET])
    prepare.run(params, tmp_path)
    before = snapshot(tmp_path / "data")
    shutil.rmtree(tmp_path / "reports")
    (tmp_path / "reports").write_text("a file where the reports folder belongs")
    with pytest.raises(OSError):
        prepare.run(load_params(None, ["data.sources=[{kind: chatterbot, languages: [english]}]", "data.split_seed=7",
                                       *QUIET]), tmp_path)
    assert snapshot(tmp_path / "data") == before


def test_bucketize_replaces_its_outputs_as_a_whole(tmp_path):
    params = load_params(None, ["data.sources=[{kind: chatterbot, languages: [english]}]", *QUIET])
    prepare.run(params, tmp_path)
    bucketize.run(params, tmp_path)
    before = snapshot(tmp_path)
    shutil.rmtree(tmp_path / "reports/plots")
    (tmp_path / "reports/plots").write_text("a file where the plots folder belongs")
    with pytest.raises(OSError):
        bucketize.run(load_params(None, ["data.sources=[{kind: chatterbot, languages: [english]}]",
                                         "buckets.min_bucket_size=5", *QUIET]), tmp_path)
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k != "reports/plots"} == {
        k: v for k, v in before.items() if not k.startswith("reports/plots/")}
