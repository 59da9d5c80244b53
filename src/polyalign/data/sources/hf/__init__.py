"""Named adapters for the paper's 14 public corpora, read through `datasets.load_dataset` (a hub id, or a local
folder / files for offline users) and mapped to examples with the paper's track, family and style labels.

Split policy (as the paper used them): a source's official splits are kept (validation -> val). A split the
source lacks is carved out of its official train split by a hashed split on the adapter's group key (story,
conversation, question or tree id), so related rows never straddle splits: train + validation -> train rows are
shared out between train and test; train only -> between train, val and test.

Rows an adapter's policy leaves out (no answer, not human-verified, deleted ...) become problems with a reason
that `prepare` counts in reports/prepare.json; they never stop the run. Every row is first checked against its
adapter's row model, as a file source's rows are: a row that does not fit (a list where text belongs, a missing
id) is an input error naming the row and the field, which stops the run unless `data.on_invalid` is skip.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, TypeVar

from pydantic import BeforeValidator, ConfigDict

from polyalign.data.record import Example, Problem
from polyalign.data.sources.base import RowModel, resolve, validate_row, warn_outside
from polyalign.errors import UserError
from polyalign.params import HfSource

Rows = Iterable[tuple[str, dict]]  # (origin, row) of one official split
Mapper = Callable[[Rows], Iterator[Example | Problem]]
Item = TypeVar("Item")


class HfRow(RowModel):
    """Base of the adapters' row models: the fields a mapper reads, with the types it needs. Strict, since the
    mapper reads the row as it came: what passes here is exactly what it gets."""

    model_config = ConfigDict(extra="allow", strict=True)


def as_records(value) -> list[dict]:
    """A sequence of structs as a list of dicts: `datasets` yields a Sequence of structs as a dict of lists,
    plain JSON as a list of objects."""
    if isinstance(value, dict):
        keys = list(value)
        n = max((len(value[k]) for k in keys if isinstance(value[k], list)), default=0)
        return [{k: (value[k][i] if isinstance(value[k], list) and i < len(value[k]) else None) for k in keys}
                for i in range(n)]
    return list(value or [])


# a list of structs in either layout, checked item by item (so an error names e.g. `answers[2].text`)
Records = Annotated[list[Item], BeforeValidator(lambda v: as_records(v) if isinstance(v, dict) else v)]


@dataclass(frozen=True)
class HfAdapter:
    name: str
    hub_id: str
    config: str | tuple[str, ...] | None  # a tuple: the hub dataset has one configuration per subset, read each
    language: str
    track: str
    family: str
    style: str
    group: str  # what the hashed split keeps together, for the README and reports
    licence: str
    map_rows: Mapper
    row_model: type[HfRow]  # what map_rows needs of a row
    json_field: str | None = None  # top-level key of the rows in the source's original JSON files ("data")
    revision: str | None = None  # hub revision, e.g. "refs/convert/parquet" for a repo that only holds a script


def drop(reason: str, origin: str, message: str, field: str | None = None) -> Problem:
    """A row the dataset's policy leaves out: counted by reason, never an input error."""
    return Problem(reason, origin, field, message, always_skip=True)


def per_row(fn: Callable[[str, dict], Iterator[Example | Problem]]) -> Mapper:
    """A mapper from a function of one row."""
    def mapper(rows: Rows) -> Iterator[Example | Problem]:
        for origin, row in rows:
            yield from fn(origin, row)
    return mapper


def official_split(name: str) -> str | None:
    """train / val / test for a dataset's split name (validation, dev, validation1, train_eli5 ...)."""
    lowered = name.lower()
    if "train" in lowered:
        return "train"
    if "valid" in lowered or "dev" in lowered:
        return "val"
    if "test" in lowered:
        return "test"
    return None


def split_policy(present: Iterable[str]) -> dict[str, tuple[str | None, tuple[str, ...] | None]]:
    """(fixed split, hashed pool) for each of our splits present in the source."""
    present = set(present)
    missing = tuple(s for s in ("val", "test") if s not in present)
    policy: dict[str, tuple[str | None, tuple[str, ...] | None]] = {s: (s, None) for s in present if s != "train"}
    if "train" in present:
        policy["train"] = ("train", None) if not missing else (None, ("train", *missing))
    return policy


def _registry() -> dict[str, HfAdapter]:
    from polyalign.data.sources.hf import chinese, english

    return {a.name: a for a in (*english.ADAPTERS, *chinese.ADAPTERS)}


def adapter(name: str) -> HfAdapter:
    return _registry()[name]


def _needs_field(path: Path, field: str | None) -> bool:
    """Whether a .json file is one object holding the rows under `field` (SQuAD's {"data": [...]}) rather than
    JSON lines."""
    if field is None or path.suffix.lower() != ".json":
        return False
    with path.open(encoding="utf-8", errors="replace") as fh:
        first = fh.readline()
    try:
        obj = json.loads(first)
    except RecursionError:  # not readable as JSON at all: load_dataset says so
        return False
    except json.JSONDecodeError:  # a pretty-printed object spans many lines
        return first.lstrip("\ufeff \t").startswith("{")
    return isinstance(obj, dict) and isinstance(obj.get(field), list)


def _builder(files: list[Path]) -> str:
    suffix = files[0].suffix.lower()
    return {".parquet": "parquet", ".csv": "csv", ".tsv": "csv", ".arrow": "arrow"}.get(suffix, "json")


def load(cfg: HfSource, spec: HfAdapter, root: Path) -> list:
    """(configuration, DatasetDict) for each configuration read (None when only one is): from `data_files`, a
    local folder or file, or the hub."""
    if cfg.path or cfg.data_files:  # local files: only a configuration the user names
        return [(None, _load_one(cfg, spec, root, cfg.config))]
    configs = cfg.config if cfg.config is not None else spec.config
    if not isinstance(configs, tuple):
        return [(None, _load_one(cfg, spec, root, configs))]
    return [(config, _load_one(cfg, spec, root, config)) for config in configs]


def _load_one(cfg: HfSource, spec: HfAdapter, root: Path, config: str | None):
    import datasets

    path = cfg.path or spec.hub_id
    kwargs: dict = {}
    local_files = True
    if cfg.data_files:
        files = {split: [resolve(f, root, f"data source hf:{spec.name}") for f in ([v] if isinstance(v, str) else v)]
                 for split, v in cfg.data_files.items()}
        every = [f for group in files.values() for f in group]
        path, config = _builder(every), None
        kwargs["data_files"] = {split: [str(f) for f in group] for split, group in files.items()}
        if any(_needs_field(f, spec.json_field) for f in every):
            kwargs["field"] = spec.json_field
    else:
        local = Path(path) if Path(path).is_absolute() else root / path
        if local.exists():
            warn_outside(local, root, f"data source hf:{spec.name}")
        if local.is_file():
            path, config = _builder([local]), None
            kwargs["data_files"] = {"train": str(local)}
            if _needs_field(local, spec.json_field):
                kwargs["field"] = spec.json_field
        elif local.is_dir():
            path = str(local)
        else:
            local_files = False
            revision = cfg.revision or (spec.revision if cfg.path is None else None)
            if revision:
                kwargs["revision"] = revision
    try:
        return datasets.load_dataset(path, name=config, **kwargs)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types (ConnectionError, DatasetNotFoundError ...)
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
        if local_files:
            cause = "the local files could not be read as a dataset in this adapter's layout"
        elif "scripts are no longer supported" in str(exc):
            cause = ("the hub repository holds a loading script, which this `datasets` version does not run: set "
                     "`revision: refs/convert/parquet` (the hub's parquet conversion) or point `path` / "
                     "`data_files` at downloaded files")
        elif offline:
            cause = ("HF_HUB_OFFLINE=1 is set, so the hub is not contacted: download the dataset where there is "
                     "network (or unset HF_HUB_OFFLINE), or point `path` / `data_files` at local files")
        else:
            cause = ("the hub may be unreachable from here (no network?) or the id may be wrong; point `path` / "
                     "`data_files` at local files to work offline")
        raise UserError(f"data source hf:{spec.name}: cannot load {path!r}"
                        f"{f' (config {config!r})' if config else ''}: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}\n{cause}") from None


def read_hf(cfg: HfSource, root: Path) -> Iterator[Example | Problem]:
    spec = adapter(cfg.dataset)
    for config, loaded in load(cfg, spec, root):
        yield from _read_loaded(cfg, spec, loaded, config)


def _read_loaded(cfg: HfSource, spec: HfAdapter, loaded, config: str | None) -> Iterator[Example | Problem]:
    names = [n for n in loaded if cfg.splits is None or n in cfg.splits]
    unknown = [n for n in names if official_split(n) is None]
    if unknown:
        raise UserError(f"data source hf:{spec.name}: cannot tell whether split(s) {unknown} are train, validation "
                        f"or test; choose the splits to read with `splits`")
    if cfg.splits:
        absent = sorted(set(cfg.splits) - set(loaded))
        if absent:
            raise UserError(f"data source hf:{spec.name}: no split {absent}; the source has {sorted(loaded)}")
    policy = split_policy(official_split(n) for n in names)
    label = cfg.name or spec.name
    for name in names:
        data = loaded[name]
        if cfg.max_rows and len(data) > cfg.max_rows:
            data = data.select(range(cfg.max_rows))
        fixed, pool = policy[official_split(name)]
        prefix = f"hf:{label}/{config}/{name}" if config else f"hf:{label}/{name}"
        rows = ((f"{prefix}[{i}]", row) for i, row in enumerate(data))
        invalid: list[Problem] = []
        for item in spec.map_rows(fitting(rows, spec.row_model, invalid)):
            yield from drain(invalid)
            if isinstance(item, Example):
                item.dataset = label
                item.id = item.id or item.origin.removeprefix("hf:")
                item.language = item.language or spec.language
                item.track = item.track or spec.track
                item.family = item.family or spec.family
                item.style_bucket = item.style_bucket or spec.style
                item.split, item.split_pool = fixed, pool
                item.meta.setdefault("official_split", name)
                if config:
                    item.meta.setdefault("config", config)
            yield item
        yield from drain(invalid)


def fitting(rows: Rows, model: type[HfRow], invalid: list[Problem]) -> Iterator[tuple[str, dict]]:
    """The rows that fit `model`; each one that does not goes to `invalid` as the Problem naming its field."""
    for origin, row in rows:
        checked = validate_row(model, row, origin)
        if isinstance(checked, Problem):
            invalid.append(checked)
        else:
            yield origin, row


def drain(problems: list[Problem]) -> Iterator[Problem]:
    while problems:
        yield problems.pop(0)


def group_key(*parts: str) -> str:
    """A short stable id for the text that keeps related rows together (a story, a question ...)."""
    return hashlib.blake2b("\x1f".join(parts).encode("utf-8"), digest_size=8).hexdigest()
