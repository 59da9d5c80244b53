"""`polyalign annotate serve`: the rating page, a small Starlette app on the rating database.

Each rater opens `/r/<token>`: one item at a time, in the rater's own order, with progress, A / B / tie (keys
1 2 3), "skip: can't judge" (key s) and undo of the last rating (key u). The page is a plain form (it works
without JavaScript; a few lines add the keys). Every request checks the token: an unknown one gets 404, and a
rater can only read and rate their own assigned items. A rating is committed in its own transaction before the
page moves on, so a server killed between ratings loses nothing and a restarted one shows each rater the next
item they have not rated. Rating an item twice, or one not assigned to the rater, is refused (409 / 404).
Everything a rater sees is escaped by the template engine: a model's `<script>` shows as text.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from polyalign.annotate import store

CHOICES = ("a", "b", "tie", "skip")


def create_app(database: Path) -> Starlette:
    connection = store.connect(database)
    templates = Jinja2Templates(env=Environment(loader=PackageLoader("polyalign.annotate", "templates"),
                                                autoescape=select_autoescape(default=True)))

    def rater_of(request: Request) -> str | None:
        row = connection.execute("SELECT id FROM raters WHERE token = ?", (request.path_params["token"],)).fetchone()
        return row["id"] if row else None

    def progress(rater: str) -> tuple[int, int]:
        done = connection.execute("SELECT COUNT(*) FROM ratings WHERE rater = ?", (rater,)).fetchone()[0]
        total = connection.execute("SELECT COUNT(*) FROM assignments WHERE rater = ?", (rater,)).fetchone()[0]
        return done, total

    async def page(request: Request) -> Response:
        rater = rater_of(request)
        if rater is None:
            return PlainTextResponse("not found", status_code=404)
        item = connection.execute(
            "SELECT i.* FROM assignments a JOIN items i ON i.id = a.item WHERE a.rater = ? AND NOT EXISTS "
            "(SELECT 1 FROM ratings r WHERE r.rater = a.rater AND r.item = a.item) ORDER BY a.position LIMIT 1",
            (rater,)).fetchone()
        done, total = progress(rater)
        context = {"token": request.path_params["token"], "done": done, "total": total, "item": None}
        if item is not None:
            context.update(item=dict(item), prompt=json.loads(item["context"]))
        return templates.TemplateResponse(request, "rate.html", context)

    async def rate(request: Request) -> Response:
        rater = rater_of(request)
        if rater is None:
            return PlainTextResponse("not found", status_code=404)
        form = await request.form()
        item, choice = str(form.get("item", "")), str(form.get("choice", ""))
        if choice not in CHOICES:
            return PlainTextResponse(f"choice must be one of {', '.join(CHOICES)}", status_code=400)
        scores = []
        for key in ("score_a", "score_b"):
            value = str(form.get(key) or "")
            if value and value not in {"1", "2", "3", "4", "5"}:
                return PlainTextResponse(f"{key} must be 1 to 5", status_code=400)
            scores.append(int(value) if value else None)
        assigned = connection.execute("SELECT 1 FROM assignments WHERE rater = ? AND item = ?",
                                      (rater, item)).fetchone()
        if assigned is None:
            return PlainTextResponse("no such item for this rater", status_code=404)
        try:
            with connection:  # one transaction per rating
                connection.execute("INSERT INTO ratings (rater, item, choice, score_a, score_b) VALUES (?, ?, ?, ?, ?)",
                                   (rater, item, choice, *scores))
        except sqlite3.IntegrityError:
            return PlainTextResponse("this item is already rated", status_code=409)
        return RedirectResponse(f"/r/{request.path_params['token']}", status_code=303)

    async def undo(request: Request) -> Response:
        rater = rater_of(request)
        if rater is None:
            return PlainTextResponse("not found", status_code=404)
        with connection:
            connection.execute("DELETE FROM ratings WHERE rowid = (SELECT rowid FROM ratings WHERE rater = ? "
                               "ORDER BY created_at DESC, rowid DESC LIMIT 1)", (rater,))
        return RedirectResponse(f"/r/{request.path_params['token']}", status_code=303)

    return Starlette(routes=[Route("/r/{token}", page), Route("/r/{token}/rate", rate, methods=["POST"]),
                             Route("/r/{token}/undo", undo, methods=["POST"])])


def serve(database: Path, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(create_app(database), host=host, port=port, log_level="warning")
