"""The benchmarks' CPU budget: a process's own CPU time and its live descendants', read from /proc."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.serve import process_cpu

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

# A child that spins for 0.4 s of CPU, then sleeps; its parent only sleeps.
_BUSY = "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass\ntime.sleep(60)"
_PARENT = f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', {_BUSY!r}])\ntime.sleep(60)"


def test_the_cpu_of_a_process_and_of_its_descendants_is_told_apart() -> None:
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while (cpu := process_cpu(parent.pid)) is not None and cpu[1] < 0.35 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cpu is not None
        own, descendants = cpu
        assert 0.35 <= descendants < 1.0  # the child's spin (and its interpreter's start)
        assert own < 0.3  # the parent started an interpreter and slept
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()


def test_no_such_process_has_no_cpu_to_tell() -> None:
    assert process_cpu(2**22 + 12345) is None  # above the kernel's largest pid limit: never a process
