"""User-facing errors: the CLI prints their message and exits with status 2, without a traceback.

Besides `UserError`, this module turns the faults a user can fix but Python reports as exceptions (a corrupt
or truncated file, a full disk) into one line that names the file and the command that writes it again."""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import re
import signal
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePath


class UserError(Exception):
    """A mistake the user can fix (bad parameter, bad input file); the message says what and where."""

    exit_code = 2


class Terminated(BaseException):
    """SIGTERM (a scheduler, `timeout`, `kill`) stopped a stage. It exits 143, as a process the signal killed
    would, so that no wrapper mistakes it for success (Lightning alone ends the process with status 0).

    Like KeyboardInterrupt it is not an `Exception`: the signal can arrive inside library code that catches
    every Exception and raises another (`inspect.getfullargspec` turns any into "TypeError: unsupported
    callable", and Lightning calls it on every hook), which once made a SIGTERM exit with status 1."""

    exit_code = 128 + signal.SIGTERM


def terminated(label: str, hint: str = "") -> Terminated:
    return Terminated(f"{label}: stopped by SIGTERM; its outputs were left as they were{hint}")


@contextmanager
def sigterm_stops(label: str, hint: str = "") -> Iterator[None]:
    """Within the block SIGTERM raises `Terminated` at once, wherever the stage is: atomic writes then remove
    their temporary files and the previous outputs stay. Lightning calls this handler after its own while it
    trains. (Signal handlers belong to the main thread; elsewhere this does nothing.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame) -> None:
        raise terminated(label, hint)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------------------------------------
# which command writes a file

_paths = None  # the project's `paths` section, set by the CLI once params are loaded (defaults until then)


def use_paths(paths) -> None:
    """Name rerun commands after the project's own folders (params `paths`), not the defaults."""
    global _paths
    _paths = paths


def _folders() -> dict[str, str]:
    from polyalign.params import PathsParams  # params imports this module

    paths = _paths if _paths is not None else PathsParams()
    return paths.model_dump()


def _after(parts: tuple[str, ...], folder: str) -> tuple[str, ...] | None:
    """The parts of a path after the last occurrence of `folder` (a relative path such as data/buckets)."""
    inner = PurePath(folder).parts
    for start in range(len(parts) - len(inner), -1, -1):
        if parts[start:start + len(inner)] == inner:
            return parts[start + len(inner):]
    return None


def producer(path: str | Path) -> str | None:
    """The command that (re)writes `path`, read from where it lies among the project's folders; None for
    inputs and files no stage writes."""
    parts, folders = Path(path).parts, _folders()
    rest = _after(parts, folders["models"])
    if rest:
        if rest[0] == "base":
            return "polyalign init"
        if rest[0] == "critic":
            return "polyalign fit-critic"
        if rest[0] in ("sft", "hdpo") and len(rest) > 1:
            return f"polyalign {rest[0]} --variant {rest[1]}"
    rest = _after(parts, folders["checkpoints"])
    if rest and rest[0] in ("sft", "hdpo") and len(rest) > 1:
        return f"polyalign {rest[0]} --variant {rest[1]}"
    stages = {"prepared": "polyalign prepare", "buckets": "polyalign bucketize", "data_pairs": "polyalign pairs",
              "cache": "polyalign evaluate"}
    for key, command in stages.items():
        if _after(parts, folders[key]) is not None:
            return command
    rest = _after(parts, folders["reports"])
    if rest and rest[0] == "eval":
        return "polyalign evaluate"
    return None


def rerun_hint(path: str | Path) -> str:
    """What to do about a damaged file: rerun the command that writes it, or fix an input."""
    command = producer(path)
    if command is None:
        return "fix or replace it"
    resumed = _after(Path(path).parts, _folders()["checkpoints"])
    return f"rerun `{command}`" + (" without --resume" if resumed else "")


def shown(path: str | Path) -> str:
    """A path as the user would type it: relative to the current folder when it lies inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


# ----------------------------------------------------------------------------------------------------------
# faults the CLI recognises

# modules whose code only runs while a file is read: an exception raised inside them means the file is damaged
_READERS = ("torch.serialization", "lightning.fabric.utilities.cloud_io", "pyarrow", "safetensors", "json",
            "pickle", "zipfile", "yaml")
_TMP = re.compile(r"^\.(.+)\.[^.]+\.tmp$")  # polyalign.io.atomic_path's temporary names: .<target>.<random>.tmp


def _read_error_types() -> tuple[type[BaseException], ...]:
    kinds: list[type[BaseException]] = [UnicodeDecodeError, json.JSONDecodeError, pickle.UnpicklingError,
                                        zipfile.BadZipFile]
    try:
        import pyarrow
        from safetensors import SafetensorError

        kinds += [pyarrow.ArrowException, SafetensorError]
    except ImportError:
        pass
    return tuple(kinds)


def _frames(exc: BaseException) -> list:
    """The frames the exception passed through, innermost first, without the CLI's own (their locals hold the
    command's arguments, not the file that failed)."""
    frames, tb = [], exc.__traceback__
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        if not module.startswith(("polyalign.cli", "typer", "click")):
            frames.append(tb.tb_frame)
        tb = tb.tb_next
    return frames[::-1]


def _paths_in(frame) -> list[str]:
    """The file paths among a frame's locals (paths, path strings, open files)."""
    found = []
    for value in list(frame.f_locals.values()):
        if isinstance(value, io.IOBase):
            value = getattr(value, "name", None)
        if isinstance(value, Path) or (isinstance(value, str) and 0 < len(value) < 4096 and os.sep in value):
            found.append(str(value))
    return found


def _final_path(path: str) -> str:
    """The output a temporary path of `polyalign.io` stands for (the same path when it is not one)."""
    parts = []
    for part in Path(path).parts:
        while _TMP.match(part):  # a temporary file may itself be written through a temporary path
            part = _TMP.match(part).group(1)
        parts.append(part)
    return str(Path(*parts))


def _written_path(exc: BaseException) -> str | None:
    """The output being written when `exc` was raised: every output is written to a temporary path first."""
    if isinstance(exc, OSError) and exc.filename:
        return _final_path(str(exc.filename))
    for frame in _frames(exc):
        for path in _paths_in(frame):
            if _final_path(path) != path:
                return _final_path(path)
    return None


def _read_path(exc: BaseException) -> str | None:
    """The existing file nearest to where `exc` was raised."""
    for frame in _frames(exc):
        for path in _paths_in(frame):
            if os.path.isfile(path):
                return path
    return None


def _disk_full(exc: BaseException) -> bool:
    """ENOSPC or EDQUOT, also when a library reports it in its own exception (safetensors: "os error 28")."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if re.search(r"No space left on device|Disk quota exceeded|os error (28|122)\b", str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _reads(frame) -> bool:
    """Whether a frame is file-reading code (an exception raised there means the file is damaged)."""
    name = frame.f_code.co_name.lstrip("_")
    return str(frame.f_globals.get("__name__", "")).startswith(_READERS) and not name.startswith(
        ("save", "write", "dump"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def describe(exc: BaseException) -> str | None:
    """One line for a fault the user can fix (a full disk, a file that cannot be read or is corrupt), naming
    the file and the command that writes it again; None for anything else."""
    if _disk_full(exc):
        where = _written_path(exc)
        return (f"the disk is full (no space left on device) while writing {shown(where) if where else 'an output'}; "
                "free some space and rerun (the previous outputs are unchanged)")
    if isinstance(exc, _read_error_types()) or any(map(_reads, _frames(exc))):
        path = _read_path(exc)
        if path is None:
            return f"a file could not be read ({_first_line(exc)})"
        if _final_path(path) != path:
            return None  # a temporary output: it failed while writing, not reading
        return f"{shown(path)} is corrupt or unreadable ({_first_line(exc)}); {rerun_hint(path)}"
    if isinstance(exc, OSError) and exc.filename:
        return f"{shown(exc.filename)}: {exc.strerror or _first_line(exc)}"
    return None
