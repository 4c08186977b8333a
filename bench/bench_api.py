"""Customer turn latency and throughput over HTTP, against real ``madoguchi serve`` processes.

What it measures, on the demo knowledge base (extractive answers, SQLite, one uvicorn process):
- Baseline, in this process while the server idles: bare hybrid search (embed the query + search the
  same index) p50/p95 on the same questions, and the embedder's batch throughput (64 queries a call).
- Turn latency (POST /v1/conversations/{id}/messages, JSON) p50/p95 at 1, 16 and 64 concurrent
  customers, each in its own conversation; the overhead ratio API p50 / bare search p50. At 1
  customer the turns and the bare searches alternate in ``--rounds`` blocks of the same questions.
- Throughput at the highest concurrency vs the embedder's batch throughput (it and bare search
  measured again just before and after each higher load), with the cross-request query batcher
  (``api.query_batch_size``, default 64) and, for comparison, without it (0).
- The CPU budget of each higher load (Linux /proc): CPU time per turn of the server's own process,
  of its query model's process and of this client, and the throughput the machine's cores allow at
  that cost. The cores are shared by all three, while the batch-throughput baseline has the model
  alone on all of them: the server's own CPU per turn is what keeps the two apart.

The server runs with its defaults: the batched query model in a process of its own
(``api.model_process``); the environment passes through, so ``MADOGUCHI_API__MODEL_PROCESS=false``
measures it in the server's process.

    .venv/bin/python -m bench.bench_api [--turns 200] [--concurrency 1,16,64] [--rounds 5] [--no-unbatched]
        [--client lean|httpx]

The two cores are shared by the server and this client, and the machine's speed drifts by tens of
percent within minutes; hence the ratios, each against a baseline measured in the same minutes. For
the same reason the customers speak through a lean HTTP/1.1 client (``bench.lean_http``) by default:
httpx's own parsing and bookkeeping added ~3.5 ms to each turn at one customer, and under load it
takes CPU from the server. ``--client httpx`` measures with httpx instead.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx

from bench.corpus import REPO, percentile
from bench.lean_http import LeanConnection
from bench.serve import Served, free_port, issue_key, process_cpu, serve_process

ADMIN_KEY = "bench-admin-key-0123456789abcdef"
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAGAS_DO_NOT_TRACK": "true",
    "TOKENIZERS_PARALLELISM": "false",
}
OUT_OF_SCOPE = [
    "近くの美味しいラーメン屋を教えて",
    "What's the weather in Osaka tomorrow?",
    "株価の見通しは？",
]


@dataclass(frozen=True)
class Phase:
    """One load level's results."""

    concurrency: int
    latencies: list[float]  # seconds per turn
    wall: float  # seconds for the whole phase
    errors: dict[str, int]  # "status: code" -> how many
    # Seconds per turn in each server stage (the reply's Server-Timing header), in stage order.
    stages: dict[str, list[float]] = field(default_factory=dict)
    # CPU seconds the phase took: the server's own process, its descendants (the query model's
    # process), this client. None where /proc cannot tell.
    cpu: tuple[float, float, float] | None = None

    @property
    def throughput(self) -> float:
        """Turns per second."""
        return len(self.latencies) / self.wall


def demo_questions() -> list[str]:
    """Every question and variation of the demo FAQ, plus a few the base cannot answer."""
    from index.documents import FaqEntry
    from index.ingest import load_sources

    docs = load_sources([REPO / "demo" / "kb"], root=REPO / "demo" / "kb")
    faqs = [d.payload for d in docs if isinstance(d.payload, FaqEntry)]
    questions = [q for f in faqs for q in (f.question, *f.variations)]
    return questions + OUT_OF_SCOPE


def env_for(home: Path, port: int, batch: int) -> dict[str, str]:
    """The server's environment: its own home, a known admin key, batching on or off."""
    return {
        **os.environ,
        **OFFLINE,
        "MADOGUCHI_HOME": str(home),
        "MADOGUCHI_PORT": str(port),
        "MADOGUCHI_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
        "MADOGUCHI_DEMO_WIDGET_KEY": "false",
        "MADOGUCHI_API__QUERY_BATCH_SIZE": str(batch),
        "MADOGUCHI_LOG_LEVEL": "warning",
    }


def build_index(home: Path) -> None:
    """Index the demo base into ``home`` with the CLI (cached embeddings make reruns quick)."""
    subprocess.run(
        [sys.executable, "-m", "assistant.cli", "index", "build"],
        cwd=REPO,
        env=env_for(home, 0, 0),
        check=True,
        stdout=subprocess.DEVNULL,
    )


@contextmanager
def server(home: Path, batch: int) -> Iterator[Served]:
    """A ``madoguchi serve`` process on the demo index in ``home``, batching on or off."""
    port = free_port()
    with serve_process(env_for(home, port, batch), home / f"serve-{port}.log", timeout=300) as served:
        yield served


def measured_load(
    served: Served, key: str, questions: list[str], level: int, turns: int, client: str
) -> Phase:
    """``run_phase``, with the CPU that the server, its model's process and this client spent on it."""
    before, client_before = process_cpu(served.pid), time.process_time()
    phase = asyncio.run(run_phase(served.base, key, questions, level, turns, client))
    after, client_cpu = process_cpu(served.pid), time.process_time() - client_before
    if before is None or after is None:
        return phase
    return replace(phase, cpu=(after[0] - before[0], after[1] - before[1], client_cpu))


CLIENTS = ("lean", "httpx")


class _HttpxConnection:
    """httpx behind the lean client's interface: ``post(path, json_body)`` on one connection."""

    def __init__(self, base: str, headers: dict[str, str]) -> None:
        self._client = httpx.AsyncClient(base_url=base, headers=headers, timeout=120)

    async def __aenter__(self) -> _HttpxConnection:
        await self._client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.__aexit__(*exc)

    async def post(self, path: str, json_body: object) -> httpx.Response:
        return await self._client.post(path, json=json_body)


async def run_phase(
    base: str, key: str, questions: list[str], concurrency: int, turns: int, client: str = "lean"
) -> Phase:
    """``turns`` customer messages from ``concurrency`` customers at once, each in its own chat.

    Each customer has its own keep-alive connection: the lean client's (``bench.lean_http``) by
    default, or httpx's.
    """
    headers = {"Authorization": f"Bearer {key}"}
    latencies: list[float] = []
    errors: dict[str, int] = {}
    stages: dict[str, list[float]] = {}
    connection = {"lean": LeanConnection, "httpx": _HttpxConnection}[client]

    async def customer(worker: int) -> None:
        mine = range(worker, turns, concurrency)
        async with connection(base, headers) as http:
            path = ""
            for n, i in enumerate(mine):
                if n % 4 == 0:  # a new conversation every few turns, as real customers do
                    created = await http.post("/v1/conversations", {"locale": "ja"})
                    if created.status_code != 201:
                        sys.exit(f"opening a conversation failed: {created.status_code} {created.content!r}")
                    path = f"/v1/conversations/{created.json()['id']}/messages"
                start = time.perf_counter()
                response = await http.post(path, {"text": questions[i % len(questions)]})
                latencies.append(time.perf_counter() - start)
                if response.status_code != 200:
                    what = f"{response.status_code}: {response.json().get('code', '?')}"
                    errors[what] = errors.get(what, 0) + 1
                for name, seconds in server_timing(response.headers.get("server-timing", "")):
                    stages.setdefault(name, []).append(seconds)

    start = time.perf_counter()
    await asyncio.gather(*(customer(w) for w in range(concurrency)))
    wall = time.perf_counter() - start
    return Phase(concurrency, latencies, wall, errors, stages)


def server_timing(header: str) -> list[tuple[str, float]]:
    """``name;dur=ms, ...`` as (name, seconds) pairs."""
    out = []
    for part in filter(None, (p.strip() for p in header.split(","))):
        name, _, params = part.partition(";")
        if params.startswith("dur="):
            out.append((name, float(params[4:]) / 1000))
    return out


class Baseline:
    """Bare hybrid search in this process (embed the query + search the same index), and batch embedding."""

    def __init__(self, home: Path, questions: list[str]) -> None:
        from assistant.settings import Settings
        from index.embed import load_embedder
        from index.store import load_index

        settings = Settings(home=home)
        self.embedder = load_embedder(settings.embedder, settings.cache_dir)
        self.index = load_index(settings.index_dir, self.embedder)
        self.questions = questions
        for q in questions[:10]:  # warm up
            self.index.search(q, 10, query_vector=self.embedder.embed_queries([q]))

    def search(self, questions: list[str]) -> list[float]:
        """Seconds per bare hybrid search of each question."""
        latencies = []
        for q in questions:
            start = time.perf_counter()
            self.index.search(q, 10, query_vector=self.embedder.embed_queries([q]))
            latencies.append(time.perf_counter() - start)
        return latencies

    def batch_throughput(self, batch: int = 64, batches: int = 4) -> float:
        """Queries per second when the embedder gets ``batch`` queries a call."""
        texts = (self.questions * (1 + batches * batch // len(self.questions)))[: batches * batch]
        start = time.perf_counter()
        for i in range(0, len(texts), batch):
            self.embedder.embed_queries(texts[i : i + batch])
        return len(texts) / (time.perf_counter() - start)


def interleaved(
    base: str, key: str, baseline: Baseline, turns: int, rounds: int, client: str = "lean"
) -> tuple[Phase, list[float]]:
    """One customer's turns and bare searches in alternating blocks, so both see the same machine.

    The machine is shared: its speed drifts by tens of percent within a minute. Measuring the
    baseline once and the API later would put that drift into the ratio; ``rounds`` blocks of each,
    taking turns, spread it over both. Returns the API phase (all blocks) and the search latencies.
    """
    questions = baseline.questions
    blocks = [turns // rounds + (r < turns % rounds) for r in range(rounds)]  # all ``turns``, evenly
    latencies: list[float] = []
    stages: dict[str, list[float]] = {}
    searches: list[float] = []
    wall = 0.0
    errors: dict[str, int] = {}
    for block in filter(None, blocks):
        done = len(latencies)
        mine = [questions[(done + i) % len(questions)] for i in range(block)]
        searches += baseline.search(mine)
        phase = asyncio.run(run_phase(base, key, mine, 1, block, client))
        latencies += phase.latencies
        wall += phase.wall
        for what, n in phase.errors.items():
            errors[what] = errors.get(what, 0) + n
        for name, values in phase.stages.items():
            stages.setdefault(name, []).extend(values)
    return Phase(1, latencies, wall, errors, stages), searches


def ms(seconds: float) -> str:
    """Seconds as milliseconds, one decimal."""
    return f"{seconds * 1000:.1f} ms"


def report(label: str, phase: Phase, search_p50: float, batch_qps: float) -> None:
    """One line per phase: latency percentiles, ratio to bare search, throughput ratio."""
    p50, p95 = percentile(phase.latencies, 50), percentile(phase.latencies, 95)
    errors = ", ".join(f"{n} x {what}" for what, n in phase.errors.items()) or "0"
    print(
        f"{label} c={phase.concurrency:>2}: turns {len(phase.latencies)}, errors {errors}, "
        f"p50 {ms(p50)} ({p50 / search_p50:.2f}x bare search {ms(search_p50)}), p95 {ms(p95)}, "
        f"throughput {phase.throughput:.1f} turns/s ({phase.throughput / batch_qps:.2f}x batch embedding "
        f"{batch_qps:.0f} q/s)"
    )
    if phase.stages:
        medians = {name: percentile(values, 50) for name, values in phase.stages.items()}
        parts = ", ".join(f"{name} {ms(v)}" for name, v in medians.items())
        rest = p50 - sum(medians.values())
        print(f"    server stages p50: {parts}; the rest (HTTP, framework, client) ~{ms(rest)}")
    if phase.cpu is not None:
        report_cpu(phase, batch_qps)


def report_cpu(phase: Phase, batch_qps: float) -> None:
    """CPU per turn (conversations opened included) and the throughput the cores allow at that cost."""
    assert phase.cpu is not None
    cores = os.cpu_count() or 1
    server, model, client = (seconds / len(phase.latencies) for seconds in phase.cpu)
    allowed = cores / (server + model + client)
    # Without batching (or with api.model_process off) the model runs in the server's own process.
    model_part = f"query model's process {ms(model)}" if model > 0 else "the model inside the server"
    print(
        f"    CPU per turn: server {ms(server)}, {model_part}, "
        f"this client {ms(client)}; {cores} cores allow {allowed:.0f} turns/s at that cost "
        f"({allowed / batch_qps:.2f}x batch embedding)"
    )


def main() -> None:
    """Parse options, build the demo index, then each server and load level against its baseline."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=200, help="turns per load level")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated concurrent customers")
    parser.add_argument("--rounds", type=int, default=5,
                        help="at concurrency 1: alternating blocks of API turns and bare searches")
    parser.add_argument("--no-unbatched", action="store_true", help="skip the server without batching")
    parser.add_argument("--client", choices=CLIENTS, default="lean",
                        help="the customers' HTTP client: bench.lean_http (default) or httpx")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    if args.turns < 1 or args.rounds < 1 or any(c < 1 for c in levels):
        parser.error(f"--turns, --rounds and --concurrency must be positive, got {args.turns}, "
                     f"{args.rounds} and {args.concurrency}")
    questions = demo_questions()
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        home = Path(tmp)
        build_index(home)
        bare = Baseline(home, questions)
        search = bare.search(questions)
        print(
            f"baseline: bare hybrid search p50 {ms(percentile(search, 50))}, "
            f"p95 {ms(percentile(search, 95))} "
            f"({len(search)} questions); embedder batch-64 throughput "
            f"{bare.batch_throughput():.1f} queries/s; client {args.client}"
        )
        runs = [("batched", 64)] + ([] if args.no_unbatched else [("unbatched", 0)])
        for label, batch in runs:
            with server(home, batch) as served:
                base = served.base
                key = issue_key(base, ADMIN_KEY, "customer", "bench")
                asyncio.run(run_phase(base, key, questions, 4, 16, args.client))  # warm up
                for level in levels if label == "batched" else levels[-1:]:
                    if level == 1:  # the overhead ratio: bare searches in the same minutes
                        phase, search = interleaved(
                            base, key, bare, max(args.turns, 2), args.rounds, args.client
                        )
                        qps = bare.batch_throughput()
                    else:  # bare search and batch embedding measured just before and after the load
                        sample = questions[: len(questions) // 4]
                        search, before = bare.search(sample), bare.batch_throughput()
                        turns = max(args.turns, 2 * level)
                        phase = measured_load(served, key, questions, level, turns, args.client)
                        search += bare.search(sample)
                        qps = (before + bare.batch_throughput()) / 2
                    report(label, phase, percentile(search, 50), qps)


if __name__ == "__main__":
    main()
