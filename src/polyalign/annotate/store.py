"""The rating database (`human_eval/ratings.sqlite`): items, raters with their link tokens, each rater's assigned
items in order, and the ratings. It is the user's data, not a DVC output: every rating is committed in its own
transaction, in WAL mode, so a server killed between two ratings loses neither."""

from __future__ import annotations

import sqlite3
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS raters (
    id TEXT PRIMARY KEY, token TEXT NOT NULL UNIQUE, kind TEXT NOT NULL DEFAULT 'human');
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY,
    task TEXT NOT NULL CHECK (task IN ('pairwise', 'spot', 'attention')),
    prompt_id TEXT NOT NULL, bucket TEXT NOT NULL, slice TEXT NOT NULL, language TEXT NOT NULL,
    context TEXT NOT NULL,            -- JSON: {"history": [{role, text}], "context": str, "question": str}
    a_method TEXT NOT NULL, a_text TEXT NOT NULL, b_method TEXT NOT NULL, b_text TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS assignments (
    rater TEXT NOT NULL REFERENCES raters(id), item TEXT NOT NULL REFERENCES items(id),
    position INTEGER NOT NULL, PRIMARY KEY (rater, item));
CREATE TABLE IF NOT EXISTS ratings (
    rater TEXT NOT NULL, item TEXT NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'skip')),
    score_a INTEGER CHECK (score_a BETWEEN 1 AND 5), score_b INTEGER CHECK (score_b BETWEEN 1 AND 5),
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (rater, item), FOREIGN KEY (rater, item) REFERENCES assignments(rater, item));
"""


def connect(path: Path) -> sqlite3.Connection:
    """A connection in WAL mode with foreign keys on; `with connection:` is one transaction."""
    connection = sqlite3.connect(path, timeout=30, isolation_level="DEFERRED", check_same_thread=False)
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA foreign_keys=ON")
    connection.execute("PRAGMA synchronous=FULL")  # a committed rating is on disk when the request returns
    return connection


def create(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = connect(path)
    connection.executescript(SCHEMA)
    return connection


def count_ratings(path: Path) -> int:
    if not path.is_file():
        return 0
    connection = connect(path)
    try:
        return connection.execute("SELECT COUNT(*) FROM ratings").fetchone()[0]
    except sqlite3.DatabaseError:
        return 0
    finally:
        connection.close()
