"""Several replicas, one truth: two real ``madoguchi serve`` processes on one PostgreSQL database.

Claims race across the two processes (exactly one wins each time), and a message stored through
replica 1 reaches event streams served by replica 2, woken by PostgreSQL NOTIFY (the periodic
re-check is set to a minute, so a delivery within a second or two can only be a notification).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest

from assistant.db import Database
from assistant.keys import issue_key
from tests.assistant.conftest import _empty_postgres
from tests.assistant.live import EventReader
from tests.assistant.seams import free_port
from tests.assistant.test_serve import _wait_until_healthy
from tests.conftest import REPO, model_cache_dir

pytestmark = pytest.mark.postgres


class Replica(NamedTuple):
    """A running ``madoguchi serve`` process."""

    base: str
    process: subprocess.Popen[bytes]
    log: Path


@contextmanager
def _replica(name: str, database_url: str, index_dir: Path, tmp_path: Path) -> Iterator[Replica]:
    port = free_port()
    env = os.environ | {
        "MADOGUCHI_HOME": str(tmp_path / name),
        "MADOGUCHI_PORT": str(port),
        "MADOGUCHI_DATABASE_URL": database_url,
        "MADOGUCHI_INDEX_DIR": str(index_dir),
        "MADOGUCHI_CACHE_DIR": str(model_cache_dir()),
        "MADOGUCHI_DEMO_WIDGET_KEY": "false",
        "MADOGUCHI_OPERATORS__RECHECK_SECONDS": "60",
        "MADOGUCHI_OPERATORS__MAX_CONCURRENT": "50",
    }
    log = tmp_path / f"{name}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "assistant.cli", "serve"], cwd=REPO, env=env, stdout=out, stderr=out
        )
    try:
        yield Replica(f"http://127.0.0.1:{port}", process, log)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _keys(database_url: str) -> dict[str, dict[str, str]]:
    database = Database.connect(database_url)
    try:
        with database.session() as session:
            roles = {"customer": "customer", "ana": "operator", "ben": "operator"}
            secrets = {who: issue_key(session, role, who).secret for who, role in roles.items()}  # type: ignore[arg-type]
    finally:
        database.dispose()
    return {who: {"Authorization": f"Bearer {secret}"} for who, secret in secrets.items()}


def _escalate(client: httpx.Client, base: str, customer: dict[str, str]) -> str:
    cid = str(client.post(f"{base}/v1/conversations", json={}, headers=customer).json()["id"])
    turn = client.post(
        f"{base}/v1/conversations/{cid}/messages", json={"text": "オペレーターと話したい"}, headers=customer
    )
    assert turn.json()["status"] == "escalated", turn.text
    return cid


def test_two_replicas_share_claims_and_live_events(
    postgres_server_url: str, index_dir: Path, tmp_path: Path
) -> None:
    _empty_postgres(postgres_server_url)
    keys = _keys(postgres_server_url)
    with ExitStack() as stack:
        # Both start at once (each loads the model); then both must be healthy.
        replicas = [
            stack.enter_context(_replica(n, postgres_server_url, index_dir, tmp_path)) for n in ("1", "2")
        ]
        for replica in replicas:
            _wait_until_healthy(*replica)
        one, two = (r.base for r in replicas)
        client = stack.enter_context(httpx.Client(timeout=30))
        client.post(f"{one}/v1/operator/shift", json={"on_shift": True}, headers=keys["ana"])
        client.post(f"{two}/v1/operator/shift", json={"on_shift": True}, headers=keys["ben"])

        # A claim race across the processes, several times: exactly one claimer wins each.
        winners = [_race(client, _escalate(client, one, keys["customer"]), one, two, keys) for _ in range(4)]
        assert all(w in ("ana", "ben") for w in winners)

        # A customer on replica 2 follows their chat; the operator claims on replica 1.
        cid = _escalate(client, one, keys["customer"])
        customer_stream = EventReader(
            f"{two}/v1/conversations/{cid}/events?after=2&seconds=30", keys["customer"]
        )
        stack.callback(customer_stream.close)
        assert customer_stream.next("status").data["with_person"] is False
        assert (
            client.post(f"{one}/v1/operator/conversations/{cid}/claim", headers=keys["ana"]).status_code
            == 200
        )
        assert customer_stream.next("status", timeout=5).data["with_person"] is True
        # Ana follows the chat on replica 2; the customer writes through replica 1.
        operator_stream = EventReader(
            f"{two}/v1/operator/conversations/{cid}/events?after=2&seconds=30", keys["ana"]
        )
        stack.callback(operator_stream.close)
        operator_stream.next("state")
        started = time.monotonic()
        sent = client.post(
            f"{one}/v1/conversations/{cid}/messages",
            json={"text": "請求書の再発行をお願いします"},
            headers=keys["customer"],
        )
        assert sent.status_code == 200 and sent.json()["reply"] is None  # a person owns it: the bot is silent
        heard = operator_stream.next("message", timeout=5)
        seen = customer_stream.next("message", timeout=5)
        latency = time.monotonic() - started
        assert (heard.id, heard.data["text"]) == ("3", "請求書の再発行をお願いします") and seen.id == "3"
        assert latency < 3.0, f"{latency:.2f}s: not woken by NOTIFY"
        print(f"replica 1 -> replica 2 stream latency: {latency * 1000:.0f} ms")


def _race(client: httpx.Client, cid: str, one: str, two: str, keys: dict[str, dict[str, str]]) -> str:
    barrier = threading.Barrier(2)
    codes: dict[str, int] = {}

    def claim(who: str, base: str) -> None:
        barrier.wait()
        codes[who] = client.post(
            f"{base}/v1/operator/conversations/{cid}/claim", headers=keys[who]
        ).status_code

    threads = [threading.Thread(target=claim, args=a) for a in (("ana", one), ("ben", two))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes.values()) == [200, 409], codes
    return next(who for who, code in codes.items() if code == 200)
