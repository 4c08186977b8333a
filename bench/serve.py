"""Shared by the HTTP benchmarks: real ``madoguchi serve`` processes and keys for them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import httpx

from bench.corpus import REPO

# A rate limit the benchmarks cannot hit (the API's own maximum).
UNLIMITED = {"per_minute": 100_000, "burst": 10_000}


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served(NamedTuple):
    """A running server: its URL and its process id."""

    base: str
    pid: int


@contextmanager
def serve_process(env: dict[str, str], log_path: Path, timeout: float = 600) -> Iterator[Served]:
    """A ``madoguchi serve`` process on ``env['MADOGUCHI_PORT']``; yields it once /healthz answers."""
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
            yield Served(base, process.pid)
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


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a live process from /proc, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (name) "; the name may hold spaces
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS  # ppid; utime + stime


def process_cpu(pid: int) -> tuple[float, float] | None:
    """CPU seconds so far of process ``pid`` and of its live descendants (Linux /proc), or None.

    For the benchmarks' CPU budget: the server's own work and its query model's process.
    """
    own = _stat(pid)
    if own is None:
        return None
    parents: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            parents.setdefault(stat[0], []).append(int(entry.name))
            cpu[int(entry.name)] = stat[1]
    descendants, todo = 0.0, list(parents.get(pid, []))
    while todo:
        child = todo.pop()
        descendants += cpu.get(child, 0.0)
        todo += parents.get(child, [])
    return own[1], descendants
