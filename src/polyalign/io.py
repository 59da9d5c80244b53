"""Atomic outputs: everything is written beside its final path and renamed into place, so a killed stage
never leaves a half-written artifact that DVC or a later stage would trust; `atomic_outputs` does this for all
outputs of a stage together. Outputs hold strict JSON and no path that depends on where the project lives."""

from __future__ import annotations

import json
import math
import os
import shutil
import site
import sysconfig
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(target: str | Path, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `target`; on success rename it to `target` (replacing what was there),
    on any error remove it and leave `target` untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        tmp.chmod(0o755)
    else:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if directory:
            if target.exists():
                old = target.with_name(f".{target.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                target.rename(old)
                tmp.rename(target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(target)
        else:
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


class StagedOutputs:
    """The outputs of one stage while it runs: each is written to a temporary path beside its target (a rename
    works within one file system only, and outputs may live on different ones) and `atomic_outputs` moves them
    all into place once the stage has written every one of them."""

    def __init__(self) -> None:
        self.staged: list[tuple[Path, Path]] = []  # (temporary path, target)

    def file(self, target: str | Path) -> Path:
        """An empty temporary file that becomes `target`."""
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        os.chmod(name, 0o644)
        self.staged.append((Path(name), target))
        return Path(name)

    def directory(self, target: str | Path) -> Path:
        """An empty temporary folder that becomes `target` (replacing the whole folder)."""
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        tmp.chmod(0o755)
        self.staged.append((tmp, target))
        return tmp


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _commit(staged: list[tuple[Path, Path]]) -> None:
    """Move every staged output into place. The previous outputs are set aside first and deleted only when all
    renames succeeded; if one fails, the ones already moved are undone and the previous outputs restored."""
    moved: list[tuple[Path, Path | None]] = []  # (target, its previous version set aside)
    try:
        for tmp, target in staged:
            old = None
            if target.exists() or target.is_symlink():
                old = tmp.with_name(tmp.name.removesuffix(".tmp") + ".old")
                target.rename(old)
            moved.append((target, old))
            tmp.rename(target)
    except BaseException:
        for target, old in reversed(moved):
            _remove(target)  # the new output, if its rename happened
            if old is not None:
                old.rename(target)
        raise
    for _, old in moved:
        if old is not None:
            _remove(old)


@contextmanager
def atomic_outputs() -> Iterator[StagedOutputs]:
    """All outputs of a stage replace the previous ones together or not at all:

        with atomic_outputs() as out:
            write_json(out.file(reports / "x.json"), report)
            table.write(out.directory(data / "x") / "train.parquet")

    On any error (or interruption) inside the block the temporary paths are removed and every previous
    output is left as it was."""
    out = StagedOutputs()
    try:
        yield out
        _commit(out.staged)
    except BaseException:
        for tmp, _ in out.staged:
            _remove(tmp)
        raise


def write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | Path, data: Any) -> None:
    """Strict JSON: NaN and infinities are written as null (Python's json would write the non-JSON `NaN`)."""
    write_text(target, json.dumps(json_safe(data), indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def json_safe(data: Any) -> Any:
    """NaN and infinities become null (they are not JSON), numpy scalars and tuples plain values."""
    if isinstance(data, dict):
        return {str(k): json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(v) for v in data]
    if hasattr(data, "tolist"):  # numpy arrays and scalars
        data = data.tolist()
        if isinstance(data, list):
            return json_safe(data)
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data


def _install_folders() -> list[Path]:
    """Folders that installed packages (e.g. chatterbot_corpus) live in."""
    folders = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")} | set(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        folders.add(site.getusersitepackages())
    return [Path(f) for f in folders]


def portable(text: str, root: str | Path) -> str:
    """`text` (a path, or an origin such as `/abs/file.jsonl:3`) with a leading absolute path made relative
    to the project root, or for a file of an installed package to its site-packages folder, so that outputs
    do not depend on where the project or its packages are installed. Other text is returned as it is."""
    root = Path(root)
    bases = {root.absolute(), root.resolve(), *_install_folders()}
    matching = [str(b) for b in bases if text.startswith(str(b) + os.sep)]
    if not matching:
        return text
    return text[len(max(matching, key=len)) + 1:]
