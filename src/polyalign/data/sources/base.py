"""Shared reading helpers for the source adapters: JSON / JSONL rows with their line or index, row validation
with pydantic (so a wrong type is reported with its field), and the split of a conversation into targets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from polyalign.data.record import Problem
from polyalign.errors import UserError

Row = TypeVar("Row", bound=BaseModel)


class RowModel(BaseModel):
    """Base of the per-format row models: unknown fields are kept (they go to `meta`)."""

    model_config = ConfigDict(extra="allow")

    def extras(self) -> dict[str, Any]:
        return dict(self.__pydantic_extra__ or {})


def resolve(path: str, root: Path) -> Path:
    p = Path(path)
    p = p if p.is_absolute() else root / p
    if not p.is_file():
        raise UserError(f"data source file not found: {path}" + ("" if p.parent.is_dir() else
                                                                  f" (no folder {p.parent})"))
    return p


def load_json(path: Path) -> Any:
    """Whole-file JSON; a syntax error stops the run with file, line and column (a file that cannot be parsed
    has no rows to skip)."""
    try:
        with path.open(encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def iter_rows(path: Path) -> Iterator[tuple[str, Any] | Problem]:
    """Rows of a JSONL file (origin `file:line`) or of a JSON array (origin `file[index]`)."""
    if path.suffix in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8", errors="strict") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                origin = f"{path}:{lineno}"
                try:
                    yield origin, json.loads(line)
                except json.JSONDecodeError as exc:
                    yield Problem("invalid_json", origin, None, f"not valid JSON ({exc.msg} at column {exc.colno})")
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
    if not isinstance(row, dict):
        return Problem("invalid_row", origin, None, f"expected a JSON object, got {type(row).__name__}")
    try:
        return model.model_validate(row)
    except ValidationError as err:
        first = err.errors()[0]
        value = first.get("input")
        shown = "" if first["type"] == "missing" else f" (got {json.dumps(value, ensure_ascii=False)[:80]})"
        return Problem("invalid_field", origin, field_name(tuple(first["loc"])) or None, first["msg"] + shown)


def validated_rows(path: Path, model: type[Row]) -> Iterator[tuple[str, Row] | Problem]:
    """Rows of `path` checked against `model`: (origin, row), or a Problem for a row that does not fit."""
    for item in iter_rows(path):
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
