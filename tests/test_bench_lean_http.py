"""The benchmarks' lean HTTP client against a real uvicorn: what it reads, reuses and refuses."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from bench.lean_http import LeanConnection, LeanHTTPError
from tests.assistant.seams import free_port, uvicorn_in_thread


def _app() -> FastAPI:
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> JSONResponse:
        body = await request.json()
        peer = request.client.port if request.client else None
        return JSONResponse(
            {"got": body, "auth": request.headers.get("authorization"), "peer": peer},
            status_code=201 if body.get("create") else 200,
            headers={"Server-Timing": "store;dur=1.50, answer;dur=12.00"},
        )

    @app.post("/bye")
    async def bye() -> JSONResponse:
        return JSONResponse({"bye": True}, headers={"Connection": "close"})

    @app.post("/stream")
    async def stream() -> StreamingResponse:
        return StreamingResponse(iter([b"a", b"b"]), media_type="text/plain")

    return app


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with uvicorn_in_thread(_app(), free_port()) as url:
        yield url


def test_it_posts_json_and_reads_status_headers_and_body_on_one_kept_connection(base: str) -> None:
    async def run() -> list[tuple[int, dict[str, object], str]]:
        async with LeanConnection(base, {"Authorization": "Bearer k"}) as http:
            out = []
            for body in ({"text": "料金はいくらですか"}, {"create": True, "text": "x" * 70_000}):
                response = await http.post("/echo", body)
                out.append((response.status_code, response.json(), response.headers["server-timing"]))
            return out

    (first_status, first, timing), (second_status, second, _) = asyncio.run(run())
    assert (first_status, second_status) == (200, 201)
    assert first["got"] == {"text": "料金はいくらですか"} and first["auth"] == "Bearer k"
    assert second["got"] == {"create": True, "text": "x" * 70_000}  # a body bigger than one read
    assert timing == "store;dur=1.50, answer;dur=12.00"
    assert first["peer"] == second["peer"]  # the same connection, kept alive


def test_it_opens_a_new_connection_after_the_server_closes_one(base: str) -> None:
    async def run() -> tuple[object, object, object]:
        async with LeanConnection(base) as http:
            before = (await http.post("/echo", {})).json()["peer"]
            bye = (await http.post("/bye", {})).json()
            after = (await http.post("/echo", {})).json()["peer"]
            return before, bye, after

    before, bye, after = asyncio.run(run())
    assert bye == {"bye": True}
    assert before != after


def test_it_refuses_a_response_without_a_length_and_a_base_it_cannot_use(base: str) -> None:
    async def run() -> None:
        async with LeanConnection(base) as http:
            await http.post("/stream", {})

    with pytest.raises(LeanHTTPError, match="without a Content-Length .*chunked"):
        asyncio.run(run())
    with pytest.raises(ValueError, match="need http://host:port"):
        LeanConnection("https://example.org")
