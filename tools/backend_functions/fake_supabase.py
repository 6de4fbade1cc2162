"""A small stand-in for the Supabase the backend's edge functions talk to: PostgREST tables held in
memory, the auth user endpoint, and `functions/v1/<name>` forwarded to other functions.

It is the scaffolding around the code under test (the backend's functions, run unmodified, and
the worker they call), not the thing tested: it answers what supabase-js v2 asks with PostgREST's
shapes (filters eq/neq/is/in, `.single()` and `.maybeSingle()` through the object media type,
inserts and updates that return their rows, rpc calls that return null) and records every call.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import FastAPI, Request, Response

OBJECT_MEDIA = "application/vnd.pgrst.object+json"
CONTROL_PARAMS = {"select", "order", "limit", "offset", "on_conflict", "columns"}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def _matches(row: Mapping[str, Any], column: str, condition: str) -> bool:
    """One PostgREST filter (`eq.x`, `neq.x`, `is.null`, `in.(a,b)`); other operators pass rows through."""
    negate = condition.startswith("not.")
    op, _, operand = condition.removeprefix("not.").partition(".")
    value = row.get(column.split("->")[0])
    if op == "eq":
        hit = _text(value) == operand
    elif op == "neq":
        hit = _text(value) != operand
    elif op == "is":
        hit = _text(value) == operand
    elif op == "in":
        hit = _text(value) in {v.strip('"') for v in operand.strip("()").split(",")}
    else:
        return True
    return hit != negate


class FakeSupabase:
    def __init__(self, tables: Mapping[str, list[dict[str, Any]]], *, user: dict[str, Any],
                 functions: Mapping[str, str] | None = None) -> None:
        self.tables = {name: [dict(row) for row in rows] for name, rows in tables.items()}
        self.user = user
        self.functions = dict(functions or {})  # name -> base URL of a running function
        self.calls: list[tuple[str, str]] = []
        self._ids = itertools.count(1)
        self.app = self._build()

    def _rows(self, table: str, params: Mapping[str, str]) -> list[dict[str, Any]]:
        rows = self.tables.get(table, [])
        for column, condition in params.items():
            if column not in CONTROL_PARAMS and column not in ("or", "and"):
                rows = [row for row in rows if _matches(row, column, condition)]
        if "limit" in params:
            rows = rows[: int(params["limit"])]
        return rows

    def _answer(self, request: Request, rows: list[dict[str, Any]], status: int = 200) -> Response:
        if OBJECT_MEDIA in request.headers.get("accept", ""):
            if len(rows) != 1:
                detail = {"code": "PGRST116", "details": f"The result contains {len(rows)} rows",
                          "hint": None, "message": "JSON object requested, multiple (or no) rows returned"}
                return Response(json.dumps(detail), 406, media_type="application/json")
            return Response(json.dumps(rows[0]), status, media_type="application/json")
        headers = {"content-range": f"0-{max(len(rows) - 1, 0)}/{len(rows)}"}
        return Response(json.dumps(rows), status, headers=headers, media_type="application/json")

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.get("/auth/v1/user")
        async def auth_user(request: Request) -> Response:
            self.calls.append(("GET", "/auth/v1/user"))
            return Response(json.dumps(self.user), media_type="application/json")

        @app.api_route("/rest/v1/rpc/{name}", methods=["GET", "POST"])
        async def rpc(name: str, request: Request) -> Response:
            self.calls.append((request.method, f"/rest/v1/rpc/{name}"))
            return Response("null", media_type="application/json")

        @app.api_route("/rest/v1/{table}", methods=["GET", "HEAD", "POST", "PATCH", "DELETE"])
        async def rest(table: str, request: Request) -> Response:
            params = dict(request.query_params)
            self.calls.append((request.method, f"/rest/v1/{table}"))
            if request.method in ("GET", "HEAD"):
                return self._answer(request, self._rows(table, params))
            if request.method == "DELETE":
                gone = self._rows(table, params)
                self.tables[table] = [row for row in self.tables.get(table, []) if row not in gone]
                return self._answer(request, gone)
            body = json.loads(await request.body() or b"null")
            if request.method == "PATCH":
                hit = self._rows(table, params)
                for row in hit:
                    row.update(body)
                return self._answer(request, hit)
            now = datetime.now(UTC).isoformat()
            items = body if isinstance(body, list) else [body]
            rows = self.tables.setdefault(table, [])
            if "merge-duplicates" in request.headers.get("prefer", ""):  # an upsert: replace on the key
                keys = params.get("on_conflict", "id").split(",")
                for item in items:
                    same = [row for row in rows if all(_text(row.get(k)) == _text(item.get(k)) for k in keys)]
                    for row in same:
                        row.update(item)
                    if same:
                        items = [i for i in items if i is not item]
            added = [{"id": str(uuid.uuid4()), "created_at": now, "updated_at": now, **item} for item in items]
            rows.extend(added)
            return self._answer(request, added, 201)

        @app.api_route("/functions/v1/{name}", methods=["GET", "POST", "OPTIONS"])
        async def function(name: str, request: Request) -> Response:
            self.calls.append((request.method, f"/functions/v1/{name}"))
            if name not in self.functions:
                return Response(json.dumps({"error": f"function {name} not deployed here"}), 404)
            headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
            async with httpx.AsyncClient(timeout=120) as client:
                answer = await client.request(request.method, f"{self.functions[name]}/",
                                              content=await request.body(), headers=headers)
            return Response(answer.content, answer.status_code, media_type=answer.headers.get("content-type"))

        return app
