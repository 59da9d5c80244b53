"""Shared reading helpers for the source adapters: JSON / JSONL rows with their line or index, row validation
with pydantic (so a wrong type is reported with its field), and the split of a conversation into targets."""

from __future__ import annotations

import codecs
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from rich.markup import escape

from polyalign.data.record import Problem
from polyalign.errors import UserError
from polyalign.log import console

Row = TypeVar("Row", bound=BaseModel)
Track = Literal["single", "multi"]

# bytes that are not UTF-8 come back from the `surrogateescape` decoder as these lone surrogates
_UNDECODED = re.compile("[\udc80-\udcff]")


class RowModel(BaseModel):
    """Base of the per-format row models: unknown fields are kept (they go to `meta`)."""

    model_config = ConfigDict(extra="allow")

    def extras(self) -> dict[str, Any]:
        return dict(self.__pydantic_extra__ or {})


class Turn(BaseModel):
    role: Literal["user", "assistant"]
    text: str


def resolve(path: str, root: Path, what: str = "data source") -> Path:
    """The file `path` names (relative to the project root `root`); a missing file or a folder stops the run,
    a file outside the project is read with a warning (DVC tracks only files inside it)."""
    p = Path(path)
    p = p if p.is_absolute() else root / p
    if p.is_dir():
        raise UserError(f"{what}: {path} is a folder, not a file; name a file in it")
    if not p.is_file():
        raise UserError(f"{what} file not found: {path}" + ("" if p.parent.is_dir() else
                                                             f" (no folder {p.parent})"))
    warn_outside(p, root, what)
    return p


def warn_outside(path: Path, root: Path, what: str) -> None:
    """A file outside the project is not a DVC dependency: `dvc repro` would not notice it change."""
    inside = Path(os.path.abspath(path)).is_relative_to(os.path.abspath(root))
    if not inside:
        console.print(f"[yellow]warning:[/] {escape(what)}: {escape(str(path))} is outside the project "
                      f"({escape(os.path.abspath(root))}), so DVC does not track it and `dvc repro` will not rerun "
                      "the stage when it changes; copy it into the project (data/raw/) to track it",
                      highlight=False, soft_wrap=True)


def load_json(path: Path) -> Any:
    """Whole-file JSON; a syntax error stops the run with file, line and column (a file that cannot be parsed
    has no rows to skip)."""
    raw = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - raw.rfind(b"\n", 0, exc.start)
        raise UserError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at byte {column} of the "
                        "line)") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
    except RecursionError:
        raise UserError(f"{path}: not valid JSON: nested too deeply to read") from None


def iter_lines(path: Path) -> Iterator[tuple[str, Any] | Problem]:
    """Rows of a JSON Lines file (origin `file:line`). A line that is not UTF-8 or not JSON becomes a Problem
    naming its column, so `data.on_invalid: skip` can count it and read on."""
    with path.open(encoding="utf-8-sig", errors="surrogateescape") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")  # with its newline, json places an error at the line's end on a line 2
            if not line.strip():
                continue
            origin = f"{path}:{lineno}"
            undecoded = _UNDECODED.search(line)
            if undecoded:
                byte = ord(undecoded.group()) - 0xDC00
                yield Problem("invalid_utf8", origin, None,
                              f"not UTF-8 text (byte 0x{byte:02x} at column {undecoded.start() + 1})")
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield Problem("invalid_json", origin, None, f"not valid JSON at column {exc.colno}: {exc.msg}")
                continue
            except RecursionError:
                yield Problem("invalid_json", origin, None, "not valid JSON: nested too deeply to read")
                continue
            yield origin, row


def iter_rows(path: Path) -> Iterator[tuple[str, Any] | Problem]:
    """Rows of a JSONL file (origin `file:line`) or of a JSON array (origin `file[index]`)."""
    if path.suffix in (".jsonl", ".ndjson"):
        yield from iter_lines(path)
        return
    data = load_json(path)
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON array of rows (or a .jsonl file), got {type(data).__name__}")
    for index, row in enumerate(data):
        yield f"{path}[{index}]", row


def field_name(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def validate_row(model: type[Row], row: Any, origin: str) -> Row | Problem:
    """`row` as `model`, or the Problem naming its first wrong field: every input (file sources, `hf` rows,
    `pairs.preference_file`) is checked this one way."""
    if not isinstance(row, dict):
        return Problem("invalid_row", origin, None, f"expected a JSON object, got {type(row).__name__}")
    try:
        return model.model_validate(row)
    except ValidationError as err:
        first = err.errors()[0]
        value = first.get("input")
        shown = "" if first["type"] == "missing" else \
            f" (got {json.dumps(value, ensure_ascii=False, default=str)[:80]})"
        return Problem("invalid_field", origin, field_name(tuple(first["loc"])) or None, first["msg"] + shown)


def validated_rows(path: Path, model: type[Row], lines: bool = False) -> Iterator[tuple[str, Row] | Problem]:
    """Rows of `path` (JSON Lines whatever the suffix with `lines`) checked against `model`: (origin, row), or
    a Problem for a row that does not fit."""
    for item in iter_lines(path) if lines else iter_rows(path):
        if isinstance(item, Problem):
            yield item
            continue
        origin, raw = item
        row = validate_row(model, raw, origin)
        yield row if isinstance(row, Problem) else (origin, row)


def conversation_targets(turns: list[tuple[str, str]]) -> Iterator[tuple[int, list[tuple[str, str]], str, str]]:
    """For every assistant turn that answers a user turn: (turn index, history before the user turn,
    the user turn, the assistant turn)."""
    for i in range(1, len(turns)):
        if turns[i][0] == "assistant" and turns[i - 1][0] == "user":
            yield i, turns[: i - 1], turns[i - 1][1], turns[i][1]


def alternating(utterances: list[str]) -> list[tuple[str, str]]:
    """Speakers alternate and the user speaks first."""
    return [("user" if i % 2 == 0 else "assistant", text) for i, text in enumerate(utterances)]
