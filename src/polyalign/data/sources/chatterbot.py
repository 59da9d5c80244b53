"""`chatterbot`: the embedded default corpus, the YAML conversations of the `chatterbot-corpus` PyPI package.

Speakers alternate and the user speaks first; every second utterance is a target with the earlier ones as
history. A two-utterance conversation is `single`, a longer one `multi` (the track belongs to the
conversation). The family comes from the file's category through `CATEGORY_FAMILY`. A few entries of the
packaged corpus are malformed (a plain string instead of a list of utterances): they are skipped and counted
whatever `data.on_invalid` says, since the packaged corpus is not the user's to fix.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import yaml

from polyalign.data.record import Example, Problem
from polyalign.data.sources.base import alternating, conversation_targets
from polyalign.errors import UserError
from polyalign.params import ChatterbotSource

LANGUAGE_DIRS = {"english": "en", "chinese": "zh", "traditionalchinese": "zh"}

# Category file -> response family. Facts and knowledge questions are `qa`; the bot talking about itself,
# computers and code is `assistant`; chit-chat, feelings and opinions are `dialogue`.
CATEGORY_FAMILY = {
    "trivia": "qa", "history": "qa", "science": "qa", "literature": "qa", "politics": "qa", "sports": "qa",
    "ai": "assistant", "botprofile": "assistant", "tech_support": "assistant", "computers": "assistant",
    "coding": "assistant",
    "conversations": "dialogue", "greetings": "dialogue", "emotion": "dialogue", "gossip": "dialogue",
    "humor": "dialogue", "food": "dialogue", "psychology": "dialogue", "movies": "dialogue",
    "health": "dialogue", "money": "dialogue",
}


def corpus_dir() -> Path:
    try:
        import chatterbot_corpus
    except ImportError:
        raise UserError("data source 'chatterbot' needs the chatterbot-corpus package: "
                        "pip install chatterbot-corpus==1.3.3") from None
    return Path(chatterbot_corpus.__file__).parent / "data"


def read(cfg: ChatterbotSource, root: Path) -> Iterator[Example | Problem]:
    base = corpus_dir()
    for lang_dir in cfg.languages:
        files = sorted((base / lang_dir).glob("*.yml"))
        if cfg.categories is not None:
            files = [f for f in files if f.stem in cfg.categories]
            missing = set(cfg.categories) - {f.stem for f in files}
            if missing:
                known = sorted(f.stem for f in (base / lang_dir).glob("*.yml"))
                raise UserError(f"data.sources chatterbot: no category {sorted(missing)} in {lang_dir}; "
                                f"known: {', '.join(known)}")
        for path in files:
            yield from _read_file(path, lang_dir)


def _read_file(path: Path, lang_dir: str) -> Iterator[Example | Problem]:
    category = path.stem
    family = CATEGORY_FAMILY.get(category, "dialogue")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for index, conv in enumerate(data.get("conversations") or []):
        origin = f"{path}: conversations[{index}]"
        if not isinstance(conv, list) or not all(isinstance(u, (str, int, float)) for u in conv):
            yield Problem("chatterbot_malformed_conversation", origin, None,
                          f"expected a list of utterances, got {type(conv).__name__}", always_skip=True)
            continue
        turns = alternating([str(u) for u in conv])
        group = f"chatterbot/{lang_dir}/{category}/{index}"
        for turn, history, question, answer in conversation_targets(turns):
            yield Example(
                id=f"{group}/{turn}",
                question=question,
                human_answer=answer,
                history=history,
                dataset="chatterbot",
                group_id=group,
                origin=origin,
                language=LANGUAGE_DIRS[lang_dir],
                track="single" if len(turns) <= 2 else "multi",
                family=family,
                style_bucket=category,
                meta={"category": category, "corpus_language": lang_dir,
                      "family_mapped": category in CATEGORY_FAMILY},
            )
