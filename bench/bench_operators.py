"""Operator workspace across two replicas: claim latency and undo-send delivery lag, lost/duplicated.

Two real ``madoguchi serve`` processes share one throw-away PostgreSQL database (dropped afterwards).
N customers (``--conversations``, default 50) each ask for a person on replica ``i % 2`` and listen to
their server-sent event stream on the *other* replica. Then, all at once, two operators (one per
replica) race to claim every conversation: exactly one claim per conversation must win. The winner
sends a message (held for the undo window) and a second one it undoes at once.

Measured:
- baseline, in the same run, on the same replicas and concurrency: ``GET /healthz`` round trips;
- claim latency (both racing claims) p50/p95, as ratios to the baseline p50/p95;
- delivery lag: from the end of the undo window (the ``deliver_at`` the API returned) to the
  customer's stream on the other replica receiving the message, p50/p95, as ratios to the baseline
  and to the delivery worker's poll interval;
- lost messages (never received) and duplicated ones (received twice, or the undone one received):
  both must be 0.

    .venv/bin/python -m bench.bench_operators [--conversations 50] [--undo-seconds 2] [--kb demo/kb]

The two cores are shared by both servers and this client, so absolute numbers move with the load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg

from bench.corpus import REPO, percentile
from bench.serve import free_port, issue_key, serve_process

ADMIN_KEY = "bench-operators-admin-key-0123456789"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
POLL_SECONDS = 0.5  # the servers' delivery worker poll (settings.operators.delivery_poll_seconds)
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "TOKENIZERS_PARALLELISM": "false",
}


@contextmanager
def scratch_database() -> Iterator[str]:
    """A new PostgreSQL database for this run, dropped at the end."""
    name = f"mdg_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def server_env(
    home: Path, index_dir: Path, kb: Path, database_url: str, port: int, undo: float
) -> dict[str, str]:
    """One replica's environment: its own home, the shared index and database."""
    return {
        **os.environ,
        **OFFLINE,
        "MADOGUCHI_HOME": str(home),
        "MADOGUCHI_INDEX_DIR": str(index_dir),
        "MADOGUCHI_KB_SOURCES": json.dumps([str(kb)]),
        "MADOGUCHI_DATABASE_URL": database_url,
        "MADOGUCHI_PORT": str(port),
        "MADOGUCHI_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
        "MADOGUCHI_DEMO_WIDGET_KEY": "false",
        "MADOGUCHI_LOG_LEVEL": "warning",
        "MADOGUCHI_OPERATORS__UNDO_SECONDS": str(undo),
        "MADOGUCHI_OPERATORS__DELIVERY_POLL_SECONDS": str(POLL_SECONDS),
        "MADOGUCHI_OPERATORS__MAX_CONCURRENT": "100",
    }


@dataclass
class Chat:
    """One customer's conversation and what its stream saw."""

    index: int
    cid: str = ""
    after: int = 0
    received: list[tuple[str, datetime]] = field(default_factory=list)  # (text, when)
    sent: str = ""
    undone: str = ""
    deliver_at: datetime | None = None
    claim_latencies: list[float] = field(default_factory=list)
    winners: int = 0


async def listen(client: httpx.AsyncClient, base: str, chat: Chat, key: str, seconds: float) -> None:
    """Read the customer's event stream; note each operator message and when it arrived."""
    url = f"{base}/v1/conversations/{chat.cid}/events?after={chat.after}&seconds={seconds}"
    headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
    name, data = "message", []
    async with client.stream("GET", url, headers=headers, timeout=seconds + 30) as response:
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
            elif not line and data:
                body = json.loads("\n".join(data))
                if name == "message" and body.get("role") == "operator":
                    chat.received.append((body["text"], datetime.now(UTC)))
                name, data = "message", []


async def open_chat(client: httpx.AsyncClient, base: str, chat: Chat, key: str) -> None:
    """The customer asks for a person."""
    headers = {"Authorization": f"Bearer {key}"}
    created = await client.post(f"{base}/v1/conversations", json={"locale": "ja"}, headers=headers)
    created.raise_for_status()
    chat.cid = created.json()["id"]
    turn = await client.post(
        f"{base}/v1/conversations/{chat.cid}/messages", json={"text": "担当者と話したい"}, headers=headers
    )
    turn.raise_for_status()
    if turn.json()["status"] != "escalated":
        raise RuntimeError(f"conversation {chat.cid} was not escalated: {turn.text}")
    last = turn.json()["reply"] or turn.json()["message"]
    chat.after = int(last["seq"])  # the stream sends what comes after the hand-off


async def timed(
    client: httpx.AsyncClient, method: str, url: str, key: str | None, body: object = None
) -> tuple[float, httpx.Response]:
    """One request and its round-trip time in seconds."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    start = time.perf_counter()
    response = await client.request(method, url, json=body, headers=headers)
    return time.perf_counter() - start, response


async def race_and_send(
    client: httpx.AsyncClient, bases: list[str], chat: Chat, operators: list[str]
) -> None:
    """Both operators claim at once (one per replica); the winner sends one message and undoes another."""
    path = f"/v1/operator/conversations/{chat.cid}"
    claims = await asyncio.gather(
        *(timed(client, "POST", f"{bases[n]}{path}/claim", operators[n]) for n in range(2))
    )
    chat.claim_latencies = [latency for latency, _ in claims]
    won = [n for n, (_, response) in enumerate(claims) if response.status_code == 200]
    chat.winners = len(won)
    if not won:
        return
    n = won[0]
    chat.sent, chat.undone = f"#{chat.index} 担当の者です。", f"#{chat.index} 取り消す"
    _, sent = await timed(client, "POST", f"{bases[n]}{path}/messages", operators[n], {"text": chat.sent})
    sent.raise_for_status()
    chat.deliver_at = datetime.fromisoformat(sent.json()["deliver_at"])
    _, second = await timed(client, "POST", f"{bases[n]}{path}/messages", operators[n], {"text": chat.undone})
    undo_url = f"{bases[n]}{path}/messages/{second.json()['id']}/undo"
    _, undone = await timed(client, "POST", undo_url, operators[n])
    undone.raise_for_status()


async def baseline(
    client: httpx.AsyncClient, bases: list[str], concurrency: int, rounds: int = 3
) -> list[float]:
    """``GET /healthz`` round trips, ``concurrency`` at once across both replicas."""
    out: list[float] = []
    for _ in range(rounds):
        results = await asyncio.gather(
            *(timed(client, "GET", f"{bases[i % 2]}/healthz", None) for i in range(concurrency))
        )
        out += [latency for latency, _ in results]
    return out


async def run(bases: list[str], conversations: int, undo: float) -> None:
    """The whole scenario; prints the report."""
    customer = issue_key(bases[0], ADMIN_KEY, "customer", "bench-customers")
    pairs = math.ceil(conversations / 50)  # an operator may own 100 (two per conversation: A and B)
    operators = [
        [issue_key(bases[r], ADMIN_KEY, "operator", f"op-{p}-{r}") for r in range(2)] for p in range(pairs)
    ]
    limits = httpx.Limits(max_connections=4 * conversations + 20, max_keepalive_connections=4 * conversations)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        for pair in operators:
            for r, key in enumerate(pair):
                (
                    await client.post(
                        f"{bases[r]}/v1/operator/shift",
                        json={"on_shift": True},
                        headers={"Authorization": f"Bearer {key}"},
                    )
                ).raise_for_status()
        chats = [Chat(i) for i in range(conversations)]
        await asyncio.gather(*(open_chat(client, bases[c.index % 2], c, customer) for c in chats))
        stream_seconds = undo + 30
        streams = [
            asyncio.create_task(listen(client, bases[(c.index + 1) % 2], c, customer, stream_seconds))
            for c in chats
        ]
        await asyncio.sleep(1.0)  # let every stream open and send its first state
        health = await baseline(client, bases, conversations)
        await asyncio.gather(*(race_and_send(client, bases, c, operators[c.index // 50]) for c in chats))
        deadline = time.monotonic() + undo + 20
        while time.monotonic() < deadline and any(c.sent and not c.received for c in chats):
            await asyncio.sleep(0.1)
        await asyncio.sleep(2 * POLL_SECONDS + 1.0)  # room for a late duplicate to show up
        for task in streams:
            task.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
    report(chats, health, undo)


def report(chats: list[Chat], health: list[float], undo: float) -> None:
    """Figures and ratios against the same run's baseline."""
    claims = [x for c in chats for x in c.claim_latencies]
    lags = [
        (when - c.deliver_at).total_seconds()
        for c in chats
        if c.deliver_at is not None
        for text, when in c.received[:1]
        if text == c.sent
    ]
    lost = sum(1 for c in chats if c.sent and c.sent not in [t for t, _ in c.received])
    duplicated = sum(
        max(0, [t for t, _ in c.received].count(c.sent) - 1) + [t for t, _ in c.received].count(c.undone)
        for c in chats
    )
    single = sum(1 for c in chats if c.winners == 1)
    h50, h95 = percentile(health, 50), percentile(health, 95)
    print(f"conversations {len(chats)} on 2 replicas, undo window {undo:g} s, worker poll {POLL_SECONDS:g} s")
    print(f"baseline GET /healthz round trip   p50 {h50 * 1000:8.1f} ms  p95 {h95 * 1000:8.1f} ms")
    if claims:
        c50, c95 = percentile(claims, 50), percentile(claims, 95)
        print(
            f"claim (2 racing per conversation)  p50 {c50 * 1000:8.1f} ms  p95 {c95 * 1000:8.1f} ms"
            f"   = {c50 / h50:.2f}x / {c95 / h95:.2f}x baseline"
        )
    if lags:
        l50, l95 = percentile(lags, 50), percentile(lags, 95)
        print(
            f"undo window end -> customer stream p50 {l50 * 1000:8.1f} ms  p95 {l95 * 1000:8.1f} ms"
            f"   = {l50 / h50:.2f}x / {l95 / h95:.2f}x baseline; {l50 / POLL_SECONDS:.2f}x / "
            f"{l95 / POLL_SECONDS:.2f}x the poll interval"
        )
    print(
        f"claims with exactly one winner {single}/{len(chats)}; "
        f"messages lost {lost}, duplicated or undone-but-delivered {duplicated}"
    )
    if lost or duplicated or single != len(chats):
        sys.exit(1)


def main() -> None:
    """Parse arguments, start two replicas on a scratch database, run, report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conversations", type=int, default=50)
    parser.add_argument("--undo-seconds", type=float, default=2.0)
    parser.add_argument("--kb", type=Path, default=REPO / "demo" / "kb")
    args = parser.parse_args()
    if args.conversations < 1:
        parser.error(f"--conversations must be at least 1, got {args.conversations}")
    with ExitStack() as stack:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mdg-bench-ops-")))
        database_url = stack.enter_context(scratch_database())
        index_dir = home / "index"
        kb, undo = args.kb.resolve(), args.undo_seconds
        envs = [server_env(home / f"r{r}", index_dir, kb, database_url, free_port(), undo) for r in range(2)]
        # The first replica migrates and builds the shared index; the second starts once it is healthy.
        bases = [
            stack.enter_context(serve_process(env, home / f"serve-{r}.log")).base
            for r, env in enumerate(envs)
        ]
        asyncio.run(run(bases, args.conversations, args.undo_seconds))


if __name__ == "__main__":
    main()
