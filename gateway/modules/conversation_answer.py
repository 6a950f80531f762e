"""Streaming an answer into a stored conversation.

The user's message and a ``streaming`` placeholder for the answer are written
in one transaction when the call is accepted; the answer is written once more
when it ends (``done``, ``unfinished`` with the partial text on cancel or
disconnect, ``error``). Nothing is written per delta. The text itself comes
from :meth:`ChatModule._chat`, so limits, budgets, failover, usage and the
final result are exactly those of ``chat.chatWithHistory``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from gateway.config import ConversationsConfig
from gateway.context import current_user
from gateway.conversations.sql import new_id
from gateway.conversations.store import Ask, ConversationRecord, ConversationStore, NewMessage
from gateway.conversations.tree import Tree
from gateway.errors import ConversationBusy, ConversationNotFound, GatewayError
from gateway.jsonrpc.registry import Final, Reasoning
from gateway.modules.chat import DEFAULT_SYSTEM_PROMPT, ChatModule
from gateway.modules.conversation_titles import fallback_title, generate_title
from gateway.providers.base import Message
from gateway.streams.protocol import current_stream

__all__ = ["Answerer", "Turn", "relayed", "shielded"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Turn:
    """Where an answer goes: under ``parent_id``, answering ``question``; ``new``: the question
    is a new user message (send, edit), else ``parent_id`` is that user message (regenerate)."""

    parent_id: str | None
    question: str
    new: bool


_STATUS = {"stop": "done", "length": "done", "cancelled": "unfinished", "error": "error"}


async def shielded(aw: Awaitable[T]) -> T:
    """Await ``aw`` to its end even if we are cancelled meanwhile (then re-raise the cancel):
    a write the client asked for is never left half-known."""
    task = asyncio.ensure_future(aw)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise


def relayed(
    fn: Callable[..., Awaitable[AsyncGenerator[Any, None]]],
) -> Callable[..., AsyncGenerator[Any, None]]:
    """Make ``fn`` (a coroutine that returns a stream) a streaming method.

    The wrapper yields what the stream yields, and a cancel the session throws in at the
    wrapper's yield is thrown into the stream at its own, whose reply (its final result)
    is yielded on: ``async for`` alone would leave the stream parked, to be closed later
    by the garbage collector, and the result would lose its usage and ids.
    """

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
        agen = await fn(*args, **kwargs)
        try:
            try:
                item = await agen.__anext__()
            except StopAsyncIteration:
                return
            while True:
                try:
                    yield item
                except asyncio.CancelledError:
                    try:
                        item = await agen.athrow(asyncio.CancelledError())
                    except StopAsyncIteration:
                        return
                    continue
                try:
                    item = await agen.__anext__()
                except StopAsyncIteration:
                    return
        finally:
            await agen.aclose()

    return wrapper


class Answerer:
    def __init__(
        self,
        *,
        chat: ChatModule,
        store: ConversationStore,
        config: ConversationsConfig,
        node: str | None,
    ) -> None:
        self.chat = chat
        self.store = store
        self.config = config
        self.node = node
        self._busy: set[str] = set()
        self._titles: set[asyncio.Task[None]] = set()

    def history(self, tree: Tree, leaf_id: str | None) -> tuple[list[Message], int]:
        """The stored branch as chat turns, newest kept within the history limits;
        (turns, how many were left out)."""
        turns = [
            Message(m.role, m.content)  # type: ignore[arg-type]
            for m in tree.branch(leaf_id)
            if m.content and m.role in ("user", "assistant")
        ]
        limits = self.chat.limits
        kept: list[Message] = []
        total = 0
        for turn in reversed(turns):
            if len(kept) >= limits.max_history_messages:
                break
            total += len(turn.content)
            if total > limits.max_history_chars:
                break
            kept.append(turn)
        kept.reverse()
        return kept, len(turns) - len(kept)

    async def open(
        self,
        conversation_id: str,
        choose: Callable[[ConversationRecord, Tree], Turn] | None = None,
        *,
        ask: str | None = None,
    ) -> AsyncGenerator[str | Final, None]:
        """Store the question and the answer's placeholder, then return the answer's stream.

        ``choose`` picks, from the conversation as stored, where the new messages go (it
        may raise, e.g. MessageNotFound); or ``ask``: a new question under the active leaf
        (a send, which the store may write in one round trip). Serve the stream through
        :func:`relayed`.
        """
        user = current_user()
        if conversation_id in self._busy:
            raise ConversationBusy(data={"conversationId": conversation_id})
        self._busy.add(conversation_id)
        try:
            fallback_model = await self.chat.get_user_model()
            # The resumable stream's id when the answer is logged (stream.resume takes it).
            stream_id = current_stream.get() or new_id()
            chosen: dict[str, Any] = {}

            def plan(record: ConversationRecord, tree: Tree) -> list[NewMessage]:
                # Runs inside the store's transaction (maybe on its thread): pure work only.
                assert choose is not None
                turn = choose(record, tree)
                model = record.model if self.chat.router.get(record.model) else fallback_model
                chosen.update(turn=turn, model=model)
                rows = (
                    [NewMessage("user", turn.question, parent=turn.parent_id)] if turn.new else []
                )
                rows.append(
                    NewMessage(
                        "assistant",
                        "",
                        status="streaming",
                        model=model,
                        stream_id=stream_id,
                        parent="@prev" if turn.new else turn.parent_id,
                    )
                )
                return rows

            now = time.time()
            if ask is not None:
                models = tuple(self.chat.router.names())
                request = self.store.start_send(
                    user.id, conversation_id, Ask(ask, stream_id, models, fallback_model), now,
                    node=self.node,
                )  # fmt: skip
            else:
                request = self.store.start_answer(
                    user.id, conversation_id, plan, now, node=self.node
                )
            task = asyncio.ensure_future(request)
            try:
                started = await asyncio.shield(task)
            except asyncio.CancelledError:
                # Cancelled while the messages were being stored: the write goes through,
                # and the answer that never started is stored as unfinished, not streaming.
                await asyncio.wait([task])
                done = None if task.cancelled() or task.exception() else task.result()
                if done is not None:
                    await self.store.finish_message(
                        done.added[-1].id,
                        content="",
                        status="unfinished",
                        now=time.time(),
                        finish_reason="cancelled",
                    )
                raise
            if started is None:
                raise ConversationNotFound(data={"conversationId": conversation_id})
            record, tree, added = started.record, started.tree, started.added
            if ask is not None:
                turn = Turn(added[0].parent_id, ask, new=True)
                model = added[-1].model or fallback_model
            else:
                turn, model = chosen["turn"], chosen["model"]
            history_leaf = (
                turn.parent_id if turn.new else tree.by_id[turn.parent_id or ""].parent_id
            )
            history, left_out = self.history(tree, history_leaf)
            ids = {
                "conversationId": record.id,
                "userMessageId": added[0].id if turn.new else turn.parent_id,
                "assistantMessageId": added[-1].id,
                "streamId": stream_id,
            }
        except BaseException:
            self._busy.discard(conversation_id)
            raise
        return self._stream(record, model, turn.question, history, ids, left_out)

    async def _stream(
        self,
        record: ConversationRecord,
        model: str,
        question: str,
        history: list[Message],
        ids: dict[str, Any],
        left_out: int,
    ) -> AsyncGenerator[str | Final, None]:
        """The chat module's stream for this answer, stored once it ends; the result gets the
        ids. A cancel thrown in at a yield is passed on to the chat stream, which reports
        what it produced (``async for`` alone would leave it parked)."""
        params = record.params
        inner: AsyncGenerator[str | Final, None] = self.chat._chat(
            Message("user", question),
            history,
            system=record.system_prompt or DEFAULT_SYSTEM_PROMPT,
            temperature=params.get("temperature"),
            max_tokens=params.get("maxTokens"),
            reasoning=True,
            model=model,
        )
        parts: list[str] = []
        final: dict[str, Any] | None = None
        ended = False

        async def end(status: str, result: dict[str, Any]) -> None:
            nonlocal ended
            ended = True
            await shielded(
                self.store.finish_message(
                    ids["assistantMessageId"],
                    content="".join(parts),
                    status=status,
                    now=time.time(),
                    usage=result.get("usage"),
                    finish_reason=result.get("finishReason"),
                    result=result,
                )
            )

        try:
            try:
                async for piece in inner:
                    if isinstance(piece, Final):
                        final = piece.result
                        break
                    if not isinstance(piece, Reasoning):  # reasoning streams, is not stored
                        parts.append(piece)
                    yield piece
            except asyncio.CancelledError:
                # rpc.cancel thrown in at our yield: the chat stream reports what it produced.
                if inner.ag_frame is not None:  # type: ignore[attr-defined]
                    try:
                        item = await inner.athrow(asyncio.CancelledError())
                        if isinstance(item, Final):
                            final = item.result
                    except (StopAsyncIteration, asyncio.CancelledError):
                        pass
                if final is None:
                    raise
            except GatewayError as exc:
                await end("error", {"finishReason": "error", "error": exc.to_error()})
                raise
            assert final is not None
            await end(_STATUS.get(final.get("finishReason", "stop"), "done"), final)
            result = {**final, **ids}
            result["droppedTurns"] = result.get("droppedTurns", 0) + left_out
            if record.message_count == 0 and record.title_auto:
                result["title"] = await self._title(record, model, question)
        finally:
            self._busy.discard(record.id)
            await inner.aclose()
            if not ended:
                # The connection went away mid-answer: keep what was written.
                await end("unfinished", {"finishReason": "cancelled"})
        yield Final(result)

    async def _title(self, record: ConversationRecord, model: str, question: str) -> str:
        """The offline model's title now; a model's in the background (placeholder now)."""
        config = self.chat.router.get(model)
        if config is not None and config.provider == "offline":
            title = fallback_title(question)
            await shielded(self._set_title(record.user_id, record.id, title))
            return title
        task = asyncio.get_running_loop().create_task(
            self._background_title(record.user_id, record.id, model, question)
        )
        self._titles.add(task)
        task.add_done_callback(self._titles.discard)
        return record.title

    async def _background_title(
        self, user_id: str, conversation_id: str, model: str, question: str
    ) -> None:
        try:
            loaded = await self.store.load(user_id, conversation_id)
            if loaded is None:
                return
            _, messages = loaded
            answer = next((m.content for m in messages if m.role == "assistant"), "")
            title = await generate_title(
                self.chat.router,
                model,
                question,
                answer,
                timeout=self.config.title_timeout_seconds,
            )
            await self._set_title(user_id, conversation_id, title)
        except Exception:
            log.exception("title generation failed")

    async def _set_title(self, user_id: str, conversation_id: str, title: str) -> None:
        """Set a generated title unless the user named the conversation meanwhile."""
        record = await self.store.get(user_id, conversation_id)
        if record is not None and record.title_auto:
            await self.store.update(
                user_id, conversation_id, time.time(), title=title, title_auto=False, touch=False
            )

    async def generate_now(self, record: ConversationRecord) -> str:
        """A title for ``record`` now (chat.generateConversationTitle)."""
        loaded = await self.store.load(record.user_id, record.id)
        messages = loaded[1] if loaded else []
        branch = Tree(messages).branch(record.active_leaf_id)
        question = next((m.content for m in branch if m.role == "user"), "")
        answer = next((m.content for m in branch if m.role == "assistant"), "")
        if not question:
            return record.title
        title = await generate_title(
            self.chat.router,
            record.model,
            question,
            answer,
            timeout=self.config.title_timeout_seconds,
        )
        await self.store.update(
            record.user_id, record.id, time.time(), title=title, title_auto=False, touch=False
        )
        return title

    async def recover(self, *, at_start: bool = False) -> int:
        """Mark answers whose process died as ``interrupted``."""
        now = time.time()
        stale = now - self.config.stale_stream_seconds
        if at_start and self.node is None:
            count = await self.store.mark_interrupted(now=now)
        elif at_start:
            count = await self.store.mark_interrupted(node=self.node, stale_before=stale, now=now)
        else:
            count = await self.store.mark_interrupted(stale_before=stale, now=now)
        if count:
            log.info("marked %d answers interrupted", count)
        return count

    async def aclose(self) -> None:
        for task in list(self._titles):
            task.cancel()
        await asyncio.gather(*self._titles, return_exceptions=True)
