"""Reading the hand-written `tests/fixtures/hf/<dataset>/` folders through the real `datasets.load_dataset`
path of the named adapters."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from conftest import FIXTURES
from polyalign.data.clean import to_record
from polyalign.data.record import Example, Problem
from polyalign.data.sources import read_source
from polyalign.params import DataParams, HfSource

HF_FIXTURES = FIXTURES / "hf"


def read(dataset: str, root: Path = Path("."), **options) -> tuple[list[Example], Counter]:
    """The examples of a fixture and the dropped rows counted by reason."""
    options.setdefault("path", str(HF_FIXTURES / dataset))
    examples, dropped = [], Counter()
    for item in read_source(HfSource(kind="hf", dataset=dataset, **options), root):
        if isinstance(item, Problem):
            assert item.always_skip, item.describe()  # a policy drop, never an input error
            dropped[item.reason] += 1
        else:
            examples.append(item)
    return examples, dropped


def records(dataset: str, seed: int = 0, **options) -> tuple[list[dict], Counter]:
    """Clean records (as `prepare` makes them, splits included) and every drop by reason."""
    examples, dropped = read(dataset, **options)
    out = []
    for ex in examples:
        rec = to_record(ex, DataParams(split_seed=seed))
        if isinstance(rec, str):
            dropped[rec] += 1
        else:
            out.append(rec)
    return out, dropped
