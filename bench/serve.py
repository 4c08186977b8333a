"""Shared by the HTTP benchmarks: real ``madoguchi serve`` processes and keys for them."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench.corpus import REPO

# A rate limit the benchmarks cannot hit (the API's own maximum).
UNLIMITED = {"per_minute": 100_000, "burst": 10_000}


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_process(env: dict[str, str], log_path: Path, timeout: float = 600) -> Iterator[str]:
    """A ``madoguchi serve`` process on ``env['MADOGUCHI_PORT']``; yields its URL once /healthz answers."""
    base = f"http://127.0.0.1:{env['MADOGUCHI_PORT']}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "assistant.cli", "serve"], cwd=REPO, env=env, stdout=log, stderr=log
        )
        try:
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    sys.exit(f"madoguchi serve exited with {process.returncode}; see {log_path}")
                try:
                    if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    sys.exit(f"madoguchi serve did not become healthy in {timeout:g} s; see {log_path}")
                time.sleep(0.5)
            yield base
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def issue_key(base: str, admin_key: str, role: str, name: str) -> str:
    """A new key of ``role`` with a rate limit the benchmark cannot hit."""
    response = httpx.post(
        f"{base}/v1/admin/api-keys",
        json={"role": role, "name": name, "rate_limit": UNLIMITED},
        headers={"Authorization": f"Bearer {admin_key}"},
    )
    response.raise_for_status()
    return str(response.json()["key"])
