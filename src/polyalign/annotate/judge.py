"""`polyalign annotate judge`: an automatic rater on the human raters' protocol. It sends every pairwise item (and
the attention checks, which look like pairwise items) to an OpenAI-compatible chat endpoint (a vLLM server, for
example) and stores each answer as a rating of a rater of kind `model`, one transaction per rating like the
page's. The export leaves model raters out of the human figures and reports their agreement with the humans.
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path

from polyalign.annotate import store
from polyalign.errors import UserError, shown

INSTRUCTION = ("You compare two responses to the same conversation. Say which one is more natural for this "
               "context: the one a person would more plausibly have written here. Answer with exactly one word: "
               "A, B or tie.")
ANSWER = re.compile(r"\b(a|b|tie)\b", re.IGNORECASE)


def prompt(item: dict) -> str:
    context = json.loads(item["context"])
    turns = [f"[{t['role']}] {t['text']}" for t in context["history"]]
    if context["context"]:
        turns.insert(0, f"[context] {context['context']}")
    turns.append(f"[user] {context['question']}")
    return ("Conversation:\n" + "\n".join(turns) + f"\n\nResponse A:\n{item['a_text']}\n\nResponse B:\n"
            f"{item['b_text']}\n\nWhich response is more natural for this context? Answer A, B or tie.")


def parse(reply: str) -> str:
    """The first A, B or tie in the reply; anything else is a skip (counted by the caller)."""
    found = ANSWER.search(reply or "")
    return found.group(1).lower() if found else "skip"


def judge(database: Path, endpoint: str, model: str, *, rater: str | None = None, api_key: str | None = None,
          timeout: float = 60.0, limit: int = 0) -> dict:
    import httpx

    if not database.is_file():
        raise UserError(f"annotate judge: no rating database at {shown(database)} (run `polyalign annotate build`)")
    rater = rater or f"judge:{model}"
    connection = store.connect(database)
    with connection:
        connection.execute("INSERT OR IGNORE INTO raters (id, token, kind) VALUES (?, ?, 'model')",
                           (rater, secrets.token_urlsafe(18)))
        connection.execute(
            "INSERT OR IGNORE INTO assignments (rater, item, position) SELECT ?, id, ROW_NUMBER() OVER (ORDER BY id) "
            "FROM items WHERE task IN ('pairwise', 'attention')", (rater,))
    todo = [dict(r) for r in connection.execute(
        "SELECT i.* FROM assignments a JOIN items i ON i.id = a.item WHERE a.rater = ? AND NOT EXISTS "
        "(SELECT 1 FROM ratings r WHERE r.rater = a.rater AND r.item = a.item) ORDER BY a.position", (rater,))]
    if limit:
        todo = todo[:limit]
    url = endpoint.rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    counts = {"a": 0, "b": 0, "tie": 0, "skip": 0}
    with httpx.Client(timeout=timeout, headers=headers) as client:
        for item in todo:
            body = {"model": model, "temperature": 0, "max_tokens": 8,
                    "messages": [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": prompt(item)}]}
            try:
                response = client.post(url, json=body)
                response.raise_for_status()
                reply = response.json()["choices"][0]["message"]["content"]
            except httpx.HTTPError as exc:
                raise UserError(f"annotate judge: {url} did not answer ({exc}); {sum(counts.values())} items were "
                                "judged and saved, rerun to continue") from None
            except (KeyError, IndexError, TypeError, ValueError):
                raise UserError(f"annotate judge: {url} answered without an OpenAI-style choices[0].message.content; "
                                "is it an OpenAI-compatible chat endpoint?") from None
            choice = parse(reply)
            with connection:
                connection.execute("INSERT INTO ratings (rater, item, choice) VALUES (?, ?, ?)",
                                   (rater, item["id"], choice))
            counts[choice] += 1
    connection.close()
    return {"rater": rater, "judged": sum(counts.values()), **counts}
