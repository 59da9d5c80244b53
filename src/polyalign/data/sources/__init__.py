"""One adapter per input format; `read_source` dispatches on the source's `kind`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from polyalign.data.record import Example, Problem
from polyalign.data.sources import chatterbot, files
from polyalign.data.sources.hf import read_hf

ADAPTERS = {
    "chatterbot": chatterbot.read,
    "polyalign": files.read_polyalign,
    "alpaca": files.read_alpaca,
    "messages": files.read_messages,
    "squad": files.read_squad,
    "kdconv": files.read_kdconv,
    "hf": read_hf,
}


def read_source(cfg, root: Path) -> Iterator[Example | Problem]:
    return ADAPTERS[cfg.kind](cfg, root)
