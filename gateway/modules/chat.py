"""The chat module (the origin's ChatServerModule): chat methods under their origin names.

Streaming methods yield text pieces and end with a :class:`Final` result::

    {"finishReason": "stop" | "length" | "cancelled" | "error",
     "model": "<model actually used>",
     "usage": {"promptTokens", "completionTokens", "totalTokens", "source"},
     "droppedTurns": <history turns trimmed to fit the context window>}
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any, Protocol

from gateway import metrics
from gateway.config import LimitsConfig
from gateway.context import User, current_user
from gateway.errors import (
    Cancelled,
    Forbidden,
    InvalidParams,
    LimitExceeded,
    ModelUnavailable,
    StoreUnavailable,
    UpstreamError,
)
from gateway.jsonrpc.registry import Final, Reasoning
from gateway.leases import Leases, MemoryLeases
from gateway.modules.base import exposed
from gateway.modules.llm import LLMModule
from gateway.providers.base import ChatRequest, Message, Usage
from gateway.providers.router import ModelRouter, RoutedStream
from gateway.sessions.store import SessionStore

__all__ = ["ChatModule", "TokenBudget"]

log = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
ROLES = ("user", "assistant", "system")
PARAM_KEYS = ("temperature", "maxTokens", "systemPrompt")


class TokenBudget(Protocol):
    """Per-user token budgets (see :mod:`gateway.budgets`)."""

    async def check(self, user: User) -> None:
        """Raise ``BudgetExceeded`` if the user has spent a budget."""
        ...

    async def record(self, user: User, tokens: int) -> None: ...

    async def usage(self, user: User) -> dict[str, Any]: ...


class ChatModule(LLMModule):
    namespace = "chat"

    def __init__(
        self,
        *,
        router: ModelRouter,
        store: SessionStore,
        default_model: str,
        limits: LimitsConfig | None = None,
        budget: TokenBudget | None = None,
        leases: Leases | None = None,
    ) -> None:
        super().__init__(router=router, store=store, default_model=default_model)
        self.limits = limits or LimitsConfig()
        self.budget = budget
        self.leases: Leases = leases or MemoryLeases()

    # Streaming chat

    @exposed("postChat")
    async def post_chat(self, message: str) -> AsyncIterator[str | Final]:
        """Stream an answer to one message."""
        async with aclosing(self._chat(self._message(message), [])) as pieces:
            async for piece in pieces:
                yield piece

    @exposed("chatWithHistory")
    async def chat_with_history(self, message: str, history: list) -> AsyncIterator[str | Final]:
        """Stream an answer to a message that follows ``history`` ([{role, content}])."""
        async with aclosing(self._chat(self._message(message), self._history(history))) as pieces:
            async for piece in pieces:
                yield piece

    @exposed("chatWithReasoning")
    async def chat_with_reasoning(
        self, message: str, history: list | None = None
    ) -> AsyncIterator[str | Final]:
        """Like chatWithHistory (``history`` optional), and the model's reasoning streams too,
        as ``stream.delta`` frames carrying ``reasoning`` instead of ``text``."""
        turns = self._history(history or [])
        async with aclosing(self._chat(self._message(message), turns, reasoning=True)) as pieces:
            async for piece in pieces:
                yield piece

    @exposed("postChatWithHistoryAndUser")
    async def post_chat_with_history_and_user(
        self, message: str, history: list
    ) -> AsyncIterator[str | Final]:
        """Like chatWithHistory, with the caller's identity in the system prompt."""
        user = current_user()
        system = (
            f"{DEFAULT_SYSTEM_PROMPT} You are talking with {user.name or user.id} "
            f"(user id {user.id!r})."
        )
        turns = self._history(history)
        async with aclosing(self._chat(self._message(message), turns, system=system)) as pieces:
            async for piece in pieces:
                yield piece

    @exposed("postChatWithParams")
    async def post_chat_with_params(self, message: str, params: dict) -> AsyncIterator[str | Final]:
        """Stream an answer with ``params``: temperature (0-2), maxTokens, systemPrompt."""
        unknown = sorted(set(params) - set(PARAM_KEYS))
        if unknown:
            raise InvalidParams(
                f"Unknown keys in params: {unknown}; allowed: {list(PARAM_KEYS)}",
                {"unknown": unknown, "allowed": list(PARAM_KEYS)},
            )
        temperature = params.get("temperature")
        if temperature is not None and (
            isinstance(temperature, bool)
            or not isinstance(temperature, int | float)
            or not 0 <= temperature <= 2
        ):
            raise InvalidParams("temperature must be a number from 0 to 2")
        max_tokens = params.get("maxTokens")
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
        ):
            raise InvalidParams("maxTokens must be a positive integer")
        system = params.get("systemPrompt")
        if system is not None:
            if not isinstance(system, str):
                raise InvalidParams("systemPrompt must be a string")
            self._check_length(system, "systemPrompt")
        answer = self._chat(
            self._message(message),
            [],
            system=system or DEFAULT_SYSTEM_PROMPT,
            temperature=float(temperature) if temperature is not None else None,
            max_tokens=max_tokens,
        )
        async with aclosing(answer) as pieces:
            async for piece in pieces:
                yield piece

    @exposed("chatNonStreaming")
    async def chat_non_streaming(self, message: str, history: list | None = None) -> dict:
        """Answer in one response: {text, finishReason, model, usage, droppedTurns}."""
        parts: list[str] = []
        result: dict[str, Any] = {}
        async for piece in self._chat(self._message(message), self._history(history or [])):
            if isinstance(piece, Final):
                result = piece.result
            else:
                parts.append(piece)
        if result.get("finishReason") == "cancelled":
            raise Cancelled(data={"text": "".join(parts)})
        return {"text": "".join(parts), **result}

    # Model choice

    @exposed("setModel")
    async def set_model(self, modelName: str) -> bool:
        """Choose the model for this user's later requests (all of the user's connections)."""
        if self.router.get(modelName) is None:
            raise InvalidParams(
                f"Unknown model {modelName!r}; choose one of {self.router.names()}",
                {"models": self.router.names()},
            )
        if not self.router.is_available(modelName):
            raise ModelUnavailable(f"Model {modelName!r} is not available on this gateway now")
        await self.update_user_model(modelName)
        return True

    @exposed("getCurrentModel")
    async def get_current_model(self) -> dict:
        """The user's model: name, provider, upstream model, context window, availability."""
        return self.router.describe(await self.get_user_model())

    @exposed("listModels")
    async def list_models(self) -> list:
        """Every configured model, with ``current`` marking the user's choice. Nothing secret."""
        current = await self.get_user_model()
        return [
            {**self.router.describe(name), "current": name == current}
            for name in self.router.names()
        ]

    @exposed("getSessionStats")
    async def get_session_stats(self) -> dict:
        """Session aggregates and your own session; per-user detail for admins only."""
        user = current_user()
        stats = await self.session_stats(detail=user.is_admin)
        if self.budget is not None:
            stats["you"]["budget"] = await self.budget.usage(user)
        return stats

    @exposed("getAllSessions")
    async def get_all_sessions(self) -> list:
        """Every session, newest first (admin role required)."""
        if not current_user().is_admin:
            raise Forbidden("The admin role is required to list sessions")
        return [s.public() for s in await self.store.sessions(limit=10_000)]

    # Shared machinery (not exposed)

    def _check_length(self, text: str, what: str) -> None:
        if len(text) > self.limits.max_message_chars:
            raise InvalidParams(
                f"{what} is longer than {self.limits.max_message_chars} characters",
                {"limit": "maxMessageChars", "max": self.limits.max_message_chars},
            )

    def _message(self, message: str) -> Message:
        if not message.strip():
            raise InvalidParams("message must not be empty")
        self._check_length(message, "message")
        return Message("user", message)

    def _history(self, history: list) -> list[Message]:
        if len(history) > self.limits.max_history_messages:
            raise InvalidParams(
                f"history has more than {self.limits.max_history_messages} messages",
                {"limit": "maxHistoryMessages", "max": self.limits.max_history_messages},
            )
        turns = []
        total = 0
        for i, item in enumerate(history):
            if (
                not isinstance(item, dict)
                or set(item) != {"role", "content"}
                or item["role"] not in ROLES
                or not isinstance(item["content"], str)
            ):
                raise InvalidParams(
                    f"history[{i}] must be {{role, content}} with role one of {list(ROLES)} "
                    "and string content"
                )
            self._check_length(item["content"], f"history[{i}].content")
            total += len(item["content"])
            turns.append(Message(item["role"], item["content"]))
        if total > self.limits.max_history_chars:
            raise InvalidParams(
                f"history holds more than {self.limits.max_history_chars} characters",
                {"limit": "maxHistoryChars", "max": self.limits.max_history_chars},
            )
        return turns

    async def _take_stream_slot(self, user: User) -> None:
        most = self.limits.streams_per_user
        if not await self.leases.acquire("stream", user.id, most):
            raise LimitExceeded(
                f"You already have {most} answers streaming; wait for one to finish",
                {"limit": "streamsPerUser", "max": most},
            )

    async def _chat(
        self,
        message: Message,
        history: list[Message],
        *,
        system: str = DEFAULT_SYSTEM_PROMPT,
        temperature: float | None = None,
        max_tokens: int | None = None,
        reasoning: bool = False,
        model: str | None = None,
    ) -> AsyncGenerator[str | Final, None]:
        """The answer's text pieces (and with ``reasoning``, its reasoning as
        :class:`Reasoning` pieces; without, reasoning is only counted), then its Final.
        ``model`` overrides the user's choice (a stored conversation's)."""
        user = current_user()
        if self.budget is not None:
            await self.budget.check(user)
        model = model or await self.get_user_model()
        request = ChatRequest(
            messages=(Message("system", system), *history, message),
            temperature=temperature,
            max_tokens=max_tokens,
        )
        await self._take_stream_slot(user)
        metrics.stream_started(model)
        try:
            stream = self.router.open(model, request)
            streamed = False
            try:
                async for chunk in stream:
                    if chunk.text:
                        streamed = True
                        yield chunk.text
                    elif reasoning:
                        streamed = True
                        yield Reasoning(chunk.reasoning)
            except asyncio.CancelledError:
                # A cancel (rpc.cancel) lands here: report what was produced so far.
                yield Final(await self._finish(user, stream, "cancelled"))
                return
            except UpstreamError as exc:
                if not streamed:
                    raise
                yield Final(await self._finish(user, stream, "error", exc.to_error()))
                return
            finally:
                # Closes the upstream at once, whether we finished, failed or were cancelled.
                await stream.aclose()
            yield Final(await self._finish(user, stream, None))
        finally:
            metrics.stream_ended(model)
            await self.leases.release("stream", user.id)

    async def _finish(
        self,
        user: User,
        stream: RoutedStream,
        finish: str | None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        result = stream.result
        used = result.model if result is not None else stream.model
        usage: Usage = result.usage if result is not None else stream.partial_usage()
        cost = self.router.cost(used, usage)
        try:
            if self.budget is not None:
                await self.budget.record(user, usage.total_tokens)
            await self.store.add_usage(
                user.id, usage.prompt_tokens, usage.completion_tokens, cost or 0.0, time.time()
            )
        except StoreUnavailable:
            # The answer is out already: it ends normally, uncounted (protocol.md says so).
            log.debug("usage of %s not counted: shared state unavailable", user.id)
        out: dict[str, Any] = {
            "finishReason": finish or (result.finish_reason if result else "stop"),
            "model": used,
            "usage": {
                "promptTokens": usage.prompt_tokens,
                "completionTokens": usage.completion_tokens,
                "totalTokens": usage.total_tokens,
                "source": usage.source,
            },
            "droppedTurns": result.dropped_turns if result else 0,
        }
        if cost is not None:
            out["cost"] = round(cost, 6)
        if error is not None:
            out["error"] = error
        return out
