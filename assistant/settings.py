"""The one settings root, built at each entry point and passed down explicitly.

Every value can come from the environment with the prefix ``MADOGUCHI_`` and ``__`` between nested
names, e.g. ``MADOGUCHI_LLM__MODEL=openai/gpt-4o-mini`` or ``MADOGUCHI_API__MAX_MESSAGE_CHARS=2000``.
Paths that default to a place under ``home`` are filled in from it when not given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from assistant.escalate import EscalationConfig

Role = Literal["customer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("customer", "operator", "admin")


class LLMSettings(BaseModel):
    """A generative model reached through litellm; no model means extractive answers only."""

    model: str | None = None
    api_base: str | None = None
    api_key: SecretStr | None = None
    timeout: float = Field(default=20.0, gt=0)
    retries: int = Field(default=1, ge=0, le=5)


class RateLimit(BaseModel):
    """A token bucket: ``burst`` requests at once, refilled at ``per_minute``."""

    per_minute: float = Field(gt=0)
    burst: int = Field(ge=1)


def _default_rate_limits() -> dict[Role, RateLimit]:
    # A widget key is shared by every visitor of one site, so it gets the largest bucket.
    return {
        "customer": RateLimit(per_minute=600, burst=120),
        "operator": RateLimit(per_minute=600, burst=120),
        "admin": RateLimit(per_minute=120, burst=30),
    }


class ApiSettings(BaseModel):
    """Limits and browser access of the HTTP API."""

    cors_origins: list[str] = Field(default_factory=lambda: ["*"])
    rate_limits: dict[Role, RateLimit] = Field(default_factory=_default_rate_limits)
    max_message_chars: int = Field(default=4000, ge=1)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # How long a request holding an idempotency key may run before a retry may take it over.
    idempotency_lease_seconds: float = Field(default=120.0, gt=0)
    # A verified key is trusted this long without asking the database again (0: ask every time).
    # Revoking through a replica's admin API takes effect there at once, elsewhere within this time.
    key_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    # How many earlier messages of the conversation a turn sees.
    history_messages: int = Field(default=12, ge=0)
    # Embed the queries of concurrent turns in one model call (index.batching); 0 turns it off.
    # bench/bench_api.py measures what it buys at 16 and 64 concurrent customers.
    query_batch_size: int = Field(default=64, ge=0)
    # Run a torch query model in a process of its own (index.procembed), where the request threads'
    # Python cannot make it wait for the GIL between operations. Only with batching on.
    model_process: bool = True
    # Torch threads of a serving process (0: torch's default, one per core): ``inference_threads`` for
    # a batch of several queries (a crowd: the other turns' Python work needs a core meanwhile), and
    # ``lone_query_threads`` for a batch of one (nobody else is embedding). Whether every core cuts
    # a lone query's latency depends on the machine, so 0 there means measured by the server as it
    # serves (``assistant.api.app.TorchThreads``); switching per batch costs nothing measurable.
    inference_threads: int = Field(default=1, ge=0)
    lone_query_threads: int = Field(default=0, ge=0)
    # Share per-key rate limits between replicas through this Redis (e.g. redis://127.0.0.1:6379/0);
    # unset: each process keeps its own buckets, right for a single replica.
    redis_url: str | None = None
    # How often a server looks at the index's CURRENT generation and, when it changed (``voc learn``,
    # ``index build``, a promoted model), loads it off the request path and swaps it in; 0: never.
    index_reload_seconds: float = Field(default=5.0, ge=0)

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"api.redis_url must be a redis://, rediss:// or unix:// URL, got {value!r}")
        return value


class OperatorSettings(BaseModel):
    """The operator workspace: shifts, the queue, live events and the customer lookup hook.

    ``on_shift`` is a floor: the escalation policy counts the operators on shift in the database and
    never fewer than this (a desk staffed by people who do not use the API yet).
    """

    on_shift: int = Field(default=0, ge=0)
    capacity: int = Field(default=10, ge=0)
    # Send with undo: an operator's message waits this long before the customer gets it.
    undo_seconds: float = Field(default=5.0, ge=0, le=60)
    # How often each replica's delivery worker looks for messages due (it also wakes when one is due).
    delivery_poll_seconds: float = Field(default=0.5, gt=0, le=10)
    # An operator on shift counts as present only if seen (any request) this recently.
    presence_seconds: float = Field(default=900.0, gt=0)
    max_concurrent: int = Field(default=5, ge=1, le=100)
    # The customer's wait estimate: this many seconds per conversation ahead, per operator on shift.
    handle_seconds: float = Field(default=300.0, gt=0)
    # Live events: how often a stream re-reads the database even without a notification, how long
    # one stream stays open before the client reconnects (with Last-Event-ID), and keep-alives.
    recheck_seconds: float = Field(default=5.0, gt=0, le=60)
    stream_seconds: float = Field(default=300.0, gt=0, le=3600)
    keepalive_seconds: float = Field(default=15.0, gt=0)
    # Optional CRM hook: GET this URL ("{member_id}" is replaced) for {name, plan, vip}; any failure
    # falls back to the customers table.
    customer_lookup_url: str | None = None
    customer_lookup_timeout: float = Field(default=2.0, gt=0, le=30)
    customer_lookup_token: SecretStr | None = None


class VocSettings(BaseModel):
    """Voice of the customer: trend alerts, knowledge gaps, content audit, the learning loop.

    Trend defaults were checked by tests/assistant/test_voc_trends.py: an outage spike of 20 messages/h
    over 40 ordinary ones/h alerts within one window, three calm 72-hour streams never alert.
    """

    trend_window_minutes: float = Field(default=60.0, gt=0)
    trend_baseline_hours: float = Field(default=72.0, gt=0)
    trend_min_count: int = Field(default=5, ge=1)
    trend_min_ratio: float = Field(default=3.0, ge=1)
    trend_alpha: float = Field(default=0.001, gt=0, lt=1)
    trend_cooldown_hours: float = Field(default=6.0, ge=0)
    # Trend alerts are POSTed here as JSON (signed with HMAC-SHA256 when a secret is set).
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    webhook_timeout: float = Field(default=5.0, gt=0, le=60)
    # A bot reply below this confidence counts as a failed question (gaps, review queue).
    low_confidence: float = Field(default=0.5, ge=0, le=1)
    # Content audit: entries not shown in this many days, not updated in this many days.
    unseen_days: int = Field(default=30, ge=1)
    stale_days: int = Field(default=365, ge=1)
    # The learned question variations (written by the review queue, read by ``index build``):
    # default <first kb source folder>/learned_variations.jsonl.
    learned_variations: Path | None = None
    # Report days are calendar days in this time zone (IANA name).
    report_timezone: str = "Asia/Tokyo"
    # ``voc nightly``: collect failed questions of this many days back; fine-tune (and promote if the
    # held-out evaluation says better) once this many reviewed pairs are new since the last attempt.
    nightly_review_days: int = Field(default=2, ge=1)
    finetune_min_new_pairs: int = Field(default=50, ge=1)
    # Torch threads of the learning jobs (fine-tuning, re-embedding): they run beside the API on the
    # same cores, where more threads than the machine has spare make every step wait (measured: a
    # small fine-tune took 159 s with torch's default pool on a busy 2-core machine, 9 s with one).
    job_threads: int = Field(default=1, ge=1, le=256)
    # ``voc nightly`` holds a lease row this long; a crashed run's lease expires after it.
    nightly_lease_minutes: float = Field(default=240.0, gt=0)

    @field_validator("report_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name like Asia/Tokyo)") from None
        return value


class Settings(BaseSettings):
    """Madoguchi's configuration; see the module docstring for the environment names."""

    model_config = SettingsConfigDict(
        env_prefix="MADOGUCHI_",
        env_nested_delimiter="__",
        nested_model_default_partial_update=True,
        extra="ignore",
    )

    home: Path = Path("./var")
    cache_dir: Path = Path("~/.cache/madoguchi")
    database_url: str = ""  # default: sqlite:///<home>/madoguchi.db
    index_dir: Path = Path()  # default: <home>/index
    kb_sources: list[Path] = Field(default_factory=lambda: [Path("demo/kb")])
    embedder: str = "default"
    # A fitted confidence artifact (``madoguchi eval calibrate``); None: the shipped default
    # (assistant/data/confidence_default.json).
    confidence_model: Path | None = None
    llm: LLMSettings = Field(default_factory=LLMSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    escalation: EscalationConfig = Field(default_factory=EscalationConfig)
    operators: OperatorSettings = Field(default_factory=OperatorSettings)
    voc: VocSettings = Field(default_factory=VocSettings)
    bootstrap_admin_key: SecretStr | None = None
    # Create a demo widget (customer) key on first start and embed it in the served widget page.
    demo_widget_key: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: str = "info"

    @model_validator(mode="before")
    @classmethod
    def _fill_home_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        home = Path(data.get("home") or "./var").expanduser()
        if not data.get("database_url"):
            data["database_url"] = f"sqlite:///{(home / 'madoguchi.db').as_posix()}"
        if not data.get("index_dir"):
            data["index_dir"] = home / "index"
        return data

    @field_validator("home", "cache_dir", "index_dir")
    @classmethod
    def _expand_user(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("bootstrap_admin_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 20:
            raise ValueError("bootstrap_admin_key must be at least 20 characters")
        return value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite", "postgresql")):
            raise ValueError(f"database_url must be a sqlite:// or postgresql:// URL, got {value!r}")
        return value
