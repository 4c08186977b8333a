"""Generative answers through litellm: one adapter, ``LiteLLMChat``, behind the ``ChatModel`` protocol.

Switching provider (OpenAI, Azure, Anthropic, Bedrock, Ollama, vLLM, any OpenAI-compatible server) is
a change of the litellm model string and ``api_base``; there are no provider classes here.

Errors raised by this module (every litellm or transport failure becomes one of them):

- ``ChatModelError``: the model could not produce an answer (bad request, auth, content policy...).
- ``LLMUnavailableError(ChatModelError)``: a timeout, connection failure, rate limit or server error
  that persisted through the retries. Callers answer extractively or escalate (``llm_unavailable``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import httpx
import litellm
import openai
from pydantic import SecretStr

log = logging.getLogger(__name__)

Role = Literal["system", "user", "assistant"]
T = TypeVar("T")


class ChatModelError(Exception):
    """The chat model failed to produce an answer."""


class LLMUnavailableError(ChatModelError):
    """The chat model did not answer in time or could not be reached, even after retries."""


@dataclass(frozen=True)
class ChatMessage:
    """One message of a chat prompt."""

    role: Role
    content: str


class ChatModel(Protocol):
    """A generative chat model: a whole answer, or its text as it is produced."""

    @property
    def name(self) -> str:
        """The model's name, as recorded with generated answers."""
        ...

    def complete(self, messages: Sequence[ChatMessage]) -> str:
        """The model's whole reply."""
        ...

    def stream(self, messages: Sequence[ChatMessage]) -> Iterator[str]:
        """The model's reply as text deltas."""
        ...


# litellm's exceptions derive from openai's, except a few raised by its own guardrails and budgets.
_LITELLM_OWN_ERRORS: tuple[type[BaseException], ...] = (
    litellm.exceptions.BudgetExceededError,
    litellm.exceptions.BlockedPiiEntityError,
    litellm.exceptions.GuardrailRaisedException,
    litellm.exceptions.ModelNotMappedError,
)
_FAILURES: tuple[type[BaseException], ...] = (
    openai.OpenAIError, httpx.HTTPError, TimeoutError, ConnectionError, *_LITELLM_OWN_ERRORS,
)
# Worth another try: the server may answer next time.
_TRANSIENT: tuple[type[BaseException], ...] = (
    openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError,
    litellm.exceptions.ServiceUnavailableError, litellm.exceptions.BadGatewayError,
    httpx.TimeoutException, httpx.TransportError, TimeoutError, ConnectionError,
)


def _as_chat_error(exc: BaseException, model: str) -> ChatModelError:
    if isinstance(exc, _TRANSIENT):
        return LLMUnavailableError(f"chat model {model!r} unavailable: {type(exc).__name__}: {exc}")
    return ChatModelError(f"chat model {model!r} failed: {type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class LiteLLMChat:
    """A chat model reached through litellm.

    ``options`` are passed to ``litellm.completion`` as they are (``temperature``, ``max_tokens``,
    headers, or litellm's own ``mock_response`` in tests).
    """

    model: str
    api_base: str | None = None
    api_key: SecretStr | None = None
    timeout: float = 20.0  # seconds per attempt
    retries: int = 1  # extra attempts after a transient failure
    backoff: float = 0.5  # seconds before the first retry, doubled after each
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.model.strip():
            raise ValueError(f"model must name a litellm model, got {self.model!r}")
        if self.timeout <= 0 or self.retries < 0 or self.backoff < 0:
            raise ValueError(
                f"timeout must be > 0, retries and backoff >= 0; got {self.timeout!r}, {self.retries!r}, "
                f"{self.backoff!r}"
            )

    @property
    def name(self) -> str:
        """The litellm model string."""
        return self.model

    def complete(self, messages: Sequence[ChatMessage]) -> str:
        """The whole reply; ``ChatModelError`` (or ``LLMUnavailableError``) on any failure."""
        response = self._with_retries(lambda: litellm.completion(**self._request(messages, stream=False)))
        try:
            content = response.choices[0].message.content
        except (AttributeError, IndexError) as exc:
            raise ChatModelError(f"chat model {self.model!r} returned no message: {response!r}") from exc
        if not content:
            raise ChatModelError(f"chat model {self.model!r} returned an empty reply")
        return str(content)

    def stream(self, messages: Sequence[ChatMessage]) -> Iterator[str]:
        """Text deltas as they arrive. Retries happen only before the first delta is yielded."""
        chunks = self._with_retries(lambda: iter(litellm.completion(**self._request(messages, stream=True))))
        try:
            for chunk in chunks:
                delta = chunk.choices[0].delta.content if chunk.choices else None
                if delta:
                    yield str(delta)
        except _FAILURES as exc:
            raise _as_chat_error(exc, self.model) from exc

    def _request(self, messages: Sequence[ChatMessage], *, stream: bool) -> dict[str, Any]:
        if not messages:
            raise ValueError("messages must not be empty")
        return {
            **self.options,
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "api_base": self.api_base,
            "api_key": self.api_key.get_secret_value() if self.api_key else None,
            "timeout": self.timeout,
            "stream": stream,
            "num_retries": 0,  # retries are ours, so streaming and non-streaming behave alike
        }

    def _with_retries(self, call: Callable[[], T]) -> T:
        attempt, delay = 0, self.backoff
        while True:
            try:
                return call()
            except _FAILURES as exc:
                error = _as_chat_error(exc, self.model)
                if not isinstance(error, LLMUnavailableError) or attempt >= self.retries:
                    raise error from exc
                log.warning("chat model %s attempt %d failed (%s); retrying", self.model, attempt + 1, exc)
            time.sleep(delay)
            attempt, delay = attempt + 1, delay * 2
