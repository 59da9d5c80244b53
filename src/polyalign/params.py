"""Typed parameters: one pydantic model per `params.yaml` section, all with `extra="forbid"`.

`params.yaml` is the single source of truth; these models hold the same defaults (a test keeps them in sync)
so that a typo or a bad value stops the run with one clear message before any work is done.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from polyalign.errors import UserError

Language = Literal["en", "zh"]
Split = Literal["train", "val", "test"]
Family = Literal["assistant", "qa", "dialogue"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PathsParams(Section):
    """Where each stage reads and writes, relative to the project root (dvc.yaml interpolates these)."""

    raw: str = "data/raw"
    prepared: str = "data/prepared"
    buckets: str = "data/buckets"
    reports: str = "reports"


class LoggingParams(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    progress: bool = Field(True, description="show progress bars for long work")


# ----------------------------------------------------------------------------------------------------------
# data sources: one model per adapter, told apart by `kind`


class _FileSource(Section):
    path: str = Field(description="file to read (relative to the project root)")
    name: str | None = Field(None, description="dataset label; default: the file name without extension")
    language: Language | None = Field(None, description="force a language; default: the row's tag or detection")
    split: Split | None = Field(None, description="the file's official split; default: hashed split")


class ChatterbotSource(Section):
    kind: Literal["chatterbot"] = "chatterbot"
    languages: list[Literal["english", "chinese", "traditionalchinese"]] = Field(
        default_factory=lambda: ["english", "chinese", "traditionalchinese"]
    )
    categories: list[str] | None = Field(None, description="only these category files (e.g. [ai, trivia])")


class PolyalignSource(_FileSource):
    kind: Literal["polyalign"]


class AlpacaSource(_FileSource):
    kind: Literal["alpaca"]
    family: Family = Field("assistant", description="family for rows that carry none")


class MessagesSource(_FileSource):
    kind: Literal["messages"]
    family: Family = "assistant"
    targets: Literal["all", "last"] = Field("all", description="every assistant turn, or only the last one")


class SquadSource(_FileSource):
    kind: Literal["squad"]


class KdconvSource(_FileSource):
    kind: Literal["kdconv"]
    language: Language | None = "zh"


Source = Annotated[
    ChatterbotSource | PolyalignSource | AlpacaSource | MessagesSource | SquadSource | KdconvSource,
    Field(discriminator="kind"),
]
SOURCE_KINDS = ("chatterbot", "polyalign", "alpaca", "messages", "squad", "kdconv")


class SplitRatios(Section):
    train: float = Field(0.8, ge=0, le=1)
    val: float = Field(0.1, ge=0, le=1)
    test: float = Field(0.1, ge=0, le=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitRatios:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1, got {total:g}")
        return self


class LengthBins(Section):
    edges: list[int] = Field(default_factory=lambda: [40, 120, 240])
    names: list[str] = Field(default_factory=lambda: ["short", "medium", "long", "xlong"])
    by_language: dict[Language, list[int]] = Field(
        default_factory=dict, description="edges for one language, e.g. {zh: [60, 180, 360]}"
    )

    @model_validator(mode="after")
    def _consistent(self) -> LengthBins:
        for label, edges in [("edges", self.edges), *[(f"by_language.{k}", v) for k, v in self.by_language.items()]]:
            if sorted(set(edges)) != list(edges):
                raise ValueError(f"{label} must be strictly increasing, got {edges}")
            if len(edges) + 1 != len(self.names):
                raise ValueError(f"{label} has {len(edges)} edges, so names needs {len(edges) + 1} entries")
        return self

    def edges_for(self, language: str) -> list[int]:
        return self.by_language.get(language, self.edges)


class DataParams(Section):
    """`prepare`: which sources to read and how to turn them into clean, split records."""

    sources: list[Source] = Field(default_factory=lambda: [ChatterbotSource()], min_length=1)
    on_invalid: Literal["error", "skip"] = Field(
        "error", description="a malformed row stops the run (error) or is skipped and counted (skip)"
    )
    drop_empty_answers: bool = True
    zh_threshold: float = Field(0.2, gt=0, le=1, description="share of CJK among letters that makes text zh")
    split_ratios: SplitRatios = Field(default_factory=SplitRatios)
    length_bins: LengthBins = Field(default_factory=LengthBins)


class BucketsParams(Section):
    """`bucketize`: bucket assignment, references and their backoff."""

    min_bucket_size: int = Field(30, ge=1, description="smaller buckets back off to a parent bucket")
    support_low: float = Field(0.1, ge=0, lt=1, description="quantile at the bottom of the support band")
    support_high: float = Field(0.9, gt=0, le=1, description="quantile at the top of the support band")
    epsilon: float = Field(1e-6, gt=0, description="floor of the per-feature scale in the distance")

    @model_validator(mode="after")
    def _band(self) -> BucketsParams:
        if self.support_low >= self.support_high:
            raise ValueError("support_low must be below support_high")
        return self


class Params(Section):
    seed: int = 42
    paths: PathsParams = Field(default_factory=PathsParams)
    logging: LoggingParams = Field(default_factory=LoggingParams)
    data: DataParams = Field(default_factory=DataParams)
    buckets: BucketsParams = Field(default_factory=BucketsParams)


# ----------------------------------------------------------------------------------------------------------
# loading, overrides and error messages


def _keys(loc: tuple[Any, ...]) -> list[Any]:
    """The location without the discriminator value pydantic inserts after a source's list index."""
    return [p for i, p in enumerate(loc) if not (i > 0 and isinstance(loc[i - 1], int) and p in SOURCE_KINDS)]


def _location(loc: tuple[Any, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(_keys(loc)))


def _lookup(data: Any, loc: tuple[Any, ...]) -> Any:
    for part in _keys(loc):
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = Params
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if part in SOURCE_KINDS:
            model = {
                "chatterbot": ChatterbotSource, "polyalign": PolyalignSource, "alpaca": AlpacaSource,
                "messages": MessagesSource, "squad": SquadSource, "kdconv": KdconvSource,
            }[part]
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        model = next((a for a in getattr(annotation, "__args__", ()) if hasattr(a, "model_fields")), annotation)
    return sorted(getattr(model, "model_fields", {}))


def format_validation_error(err: ValidationError, raw: dict, origin: str) -> str:
    lines = [f"invalid parameters in {origin}:"]
    for e in err.errors():
        loc = tuple(e["loc"])
        where = _location(loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown key; allowed keys here: {', '.join(_allowed_keys(loc))}")
            continue
        if e["type"] == "union_tag_invalid":
            lines.append(f"  {where}.kind = {e['input'].get('kind')!r}: unknown source kind; "
                         f"allowed: {', '.join(SOURCE_KINDS)}")
            continue
        value = _lookup(raw, loc) if e["type"] != "missing" else None
        shown = "" if e["type"] == "missing" else f" = {value!r}"
        lines.append(f"  {where}{shown}: {e['msg']}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (["section", "key"], value parsed as YAML, so 0.2 is a float and [a, b] a list)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {text!r}: expected section.key=value, e.g. --set buckets.min_bucket_size=50")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as exc:
        raise UserError(f"--set {text!r}: the value is not valid YAML ({exc.problem})") from None
    return key.strip().split("."), parsed


def apply_override(raw: dict, path: list[str], value: Any) -> None:
    node: Any = raw
    for i, part in enumerate(path[:-1]):
        key: Any = int(part) if isinstance(node, list) and part.isdigit() else part
        try:
            child = node[key]
        except (KeyError, IndexError, TypeError):
            child = None
        if not isinstance(child, (dict, list)):
            if isinstance(node, list):
                raise UserError(f"--set {'.'.join(path)}: {'.'.join(path[:i + 1])} is not an existing list entry")
            child = {}
            node[key] = child
        node = child
    last: Any = path[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise UserError(f"--set {'.'.join(path)}: {last} is not an index of that list")
        last = int(last)
    node[last] = value


def load_params(path: str | Path | None = "params.yaml", overrides: list[str] = ()) -> Params:
    """Read params.yaml (or the built-in defaults when it is absent and was not asked for), apply overrides,
    validate. Raises UserError with a message that names the key, the bad value and what is allowed."""
    raw: dict = Params().model_dump(mode="json")
    origin = "built-in defaults"
    if path is not None:
        p = Path(path)
        if p.exists():
            origin = str(p)
            try:
                raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f" line {mark.line + 1}" if mark else ""
                raise UserError(f"{p}:{where} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
            if not isinstance(raw, dict):
                raise UserError(f"{p}: expected a mapping of sections, got {type(raw).__name__}")
        elif str(path) != "params.yaml":
            raise UserError(f"params file not found: {p}")
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(raw, keys, value)
    if overrides:
        origin += " with overrides " + " ".join(f"--set {o}" for o in overrides)
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise UserError(format_validation_error(err, raw, origin)) from None


def dump_params(params: Params) -> str:
    return yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
