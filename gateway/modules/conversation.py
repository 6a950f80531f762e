"""The conversation module: conversations kept on the server, as ``conversation.*``.

Every method works on the authenticated user's own conversations; another
user's conversation is the same :class:`ConversationNotFound` as an unknown
id. Streaming methods (``send``, ``edit``, ``regenerate``) reuse the chat
module's streaming machinery (:meth:`ChatModule._chat`) with history built
from the stored branch; see :mod:`gateway.modules.conversation_answer`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

from gateway.config import ConversationsConfig
from gateway.context import current_user
from gateway.conversations.sql import decode_cursor
from gateway.conversations.store import ConversationRecord, ConversationStore, MessageRecord
from gateway.conversations.tree import Tree
from gateway.conversations.views import conversation_view, export, message_view
from gateway.errors import ConversationNotFound, InvalidParams, MessageNotFound
from gateway.jsonrpc.registry import Final
from gateway.modules.base import Module, exposed
from gateway.modules.chat import ChatModule
from gateway.modules.conversation_answer import Answerer, Turn, relayed
from gateway.modules.conversation_titles import MAX_TITLE_CHARS

__all__ = ["ConversationModule", "check_params"]

log = logging.getLogger(__name__)

PARAMS = ("temperature", "maxTokens")


def check_params(params: Any) -> dict[str, Any]:
    """A conversation's generation params: {temperature?: 0-2, maxTokens?: >= 1}."""
    if not isinstance(params, dict):
        raise InvalidParams("params must be an object")
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise InvalidParams(
            f"Unknown keys in params: {unknown}; allowed: {list(PARAMS)}",
            {"unknown": unknown, "allowed": list(PARAMS)},
        )
    out: dict[str, Any] = {}
    t = params.get("temperature")
    if t is not None:
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0 <= t <= 2:
            raise InvalidParams("temperature must be a number from 0 to 2")
        out["temperature"] = float(t)
    n = params.get("maxTokens")
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidParams("maxTokens must be a positive integer")
        out["maxTokens"] = n
    return out


class ConversationModule(Module):
    namespace = "conversation"

    def __init__(
        self,
        *,
        chat: ChatModule,
        store: ConversationStore,
        config: ConversationsConfig | None = None,
        node: str | None = None,
    ) -> None:
        self.chat = chat
        self.store = store
        self.config = config or ConversationsConfig()
        self.answers = Answerer(chat=chat, store=store, config=self.config, node=node)

    # Shared helpers (not exposed)

    def _title(self, title: Any) -> str:
        if not isinstance(title, str) or not title.strip():
            raise InvalidParams("title must be a non-empty string")
        if len(title) > MAX_TITLE_CHARS * 4:
            raise InvalidParams(f"title is longer than {MAX_TITLE_CHARS * 4} characters")
        return " ".join(title.split())

    def _system_prompt(self, text: Any) -> str | None:
        if text is None or text == "":
            return None
        if not isinstance(text, str):
            raise InvalidParams("systemPrompt must be a string")
        self.chat._check_length(text, "systemPrompt")
        return text

    def _model(self, model: Any) -> str:
        if not isinstance(model, str) or self.chat.router.get(model) is None:
            raise InvalidParams(
                f"Unknown model {model!r}; choose one of {self.chat.router.names()}",
                {"models": self.chat.router.names()},
            )
        return model

    async def _load(self, conversation_id: str) -> tuple[ConversationRecord, list[MessageRecord]]:
        loaded = await self.store.load(current_user().id, conversation_id)
        if loaded is None:
            raise ConversationNotFound(data={"conversationId": conversation_id})
        return loaded

    async def _get(self, conversation_id: str) -> ConversationRecord:
        record = await self.store.get(current_user().id, conversation_id)
        if record is None:
            raise ConversationNotFound(data={"conversationId": conversation_id})
        return record

    async def _update(self, conversation_id: str, **fields: Any) -> dict[str, Any]:
        record = await self.store.update(current_user().id, conversation_id, time.time(), **fields)
        if record is None:
            raise ConversationNotFound(data={"conversationId": conversation_id})
        return conversation_view(record)

    @staticmethod
    def view(
        record: ConversationRecord, messages: list[MessageRecord], *, tree: bool = False
    ) -> dict[str, Any]:
        index = Tree(messages)
        shown = messages if tree else index.branch(record.active_leaf_id)
        return {
            "conversation": conversation_view(record),
            "messages": [message_view(m, index) for m in shown],
        }

    async def create_record(
        self,
        *,
        title: str | None = None,
        system_prompt: str | None = None,
        model: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> ConversationRecord:
        user = current_user()
        if system_prompt is None:
            system_prompt = (await self.store.settings(user.id)).system_prompt
        return await self.store.create(
            user.id,
            title=self._title(title) if title is not None else None,
            model=self._model(model) if model is not None else await self.chat.get_user_model(),
            system_prompt=self._system_prompt(system_prompt),
            params=check_params(params or {}),
            now=time.time(),
        )

    # Conversations

    @exposed("create")
    async def create(
        self,
        title: str | None = None,
        systemPrompt: str | None = None,
        model: str | None = None,
        params: dict | None = None,
    ) -> dict:
        """A new, empty conversation; model defaults to the user's current model."""
        record = await self.create_record(
            title=title, system_prompt=systemPrompt, model=model, params=params
        )
        return conversation_view(record)

    @exposed("list")
    async def list_conversations(
        self,
        cursor: str | None = None,
        limit: int = 50,
        query: str | None = None,
        archived: bool = False,
    ) -> dict:
        """{items, nextCursor}: pinned first, then newest first; ``query`` searches titles
        and message text."""
        if isinstance(limit, bool) or not 1 <= limit <= self.config.max_page_size:
            raise InvalidParams(f"limit must be from 1 to {self.config.max_page_size}")
        if query is not None and len(query) > 500:
            raise InvalidParams("query is longer than 500 characters")
        if cursor is not None and decode_cursor(cursor) is None:
            raise InvalidParams("cursor is not one that conversation.list returned")
        page = await self.store.list_page(
            current_user().id,
            cursor=cursor,
            limit=limit,
            query=query.strip() if query and query.strip() else None,
            archived=archived,
        )
        return {"items": [conversation_view(r) for r in page.items], "nextCursor": page.next_cursor}

    @exposed("get")
    async def get(self, conversationId: str, tree: bool = False) -> dict:
        """{conversation, messages}: the active branch root->leaf, or every message with
        ``tree``."""
        record, messages = await self._load(conversationId)
        return self.view(record, messages, tree=tree)

    @exposed("rename")
    async def rename(self, conversationId: str, title: str) -> dict:
        """Set the title (a generated title never replaces it afterwards)."""
        return await self._update(conversationId, title=self._title(title), title_auto=False)

    @exposed("delete")
    async def delete(self, conversationId: str) -> dict:
        """Delete the conversation and all its messages."""
        if not await self.store.delete(current_user().id, conversationId):
            raise ConversationNotFound(data={"conversationId": conversationId})
        return {"deleted": True}

    @exposed("pin")
    async def pin(self, conversationId: str, pinned: bool = True) -> dict:
        """Pinned conversations list first (and are kept by the retention cleanup)."""
        return await self._update(conversationId, pinned=pinned, touch=False)

    @exposed("archive")
    async def archive(self, conversationId: str, archived: bool = True) -> dict:
        """Move out of (or back into) the main list; messages are kept."""
        return await self._update(conversationId, archived=archived, touch=False)

    @exposed("update")
    async def update(
        self,
        conversationId: str,
        systemPrompt: str | None = None,
        model: str | None = None,
        params: dict | None = None,
    ) -> dict:
        """Settings for later answers: systemPrompt ("" clears it), model, params (replaced
        whole). Omitted fields stay."""
        fields: dict[str, Any] = {}
        if systemPrompt is not None:
            fields["system_prompt"] = self._system_prompt(systemPrompt)
        if model is not None:
            fields["model"] = self._model(model)
        if params is not None:
            fields["params"] = check_params(params)
        if not fields:
            return conversation_view(await self._get(conversationId))
        return await self._update(conversationId, **fields)

    @exposed("fork")
    async def fork(self, conversationId: str, messageId: str) -> dict:
        """A new conversation with the branch from the root to ``messageId``."""
        user = current_user()
        await self._get(conversationId)
        record = await self.store.fork(user.id, conversationId, messageId, time.time())
        if record is None:
            raise MessageNotFound(data={"conversationId": conversationId, "messageId": messageId})
        return conversation_view(record)

    @exposed("export")
    async def export(self, conversationId: str, format: str = "json") -> dict:
        """{format, filename, content}: "json" (the whole tree) or "markdown" (active branch)."""
        if format not in ("json", "markdown"):
            raise InvalidParams('format must be "json" or "markdown"')
        record, messages = await self._load(conversationId)
        return export(record, messages, format)

    @exposed("setActive")
    async def set_active(self, conversationId: str, messageId: str) -> dict:
        """Show the branch through ``messageId`` (its newest descendant becomes the leaf)."""
        _, messages = await self._load(conversationId)
        tree = Tree(messages)
        if messageId not in tree.by_id:
            raise MessageNotFound(data={"conversationId": conversationId, "messageId": messageId})
        leaf = tree.newest_leaf(messageId)
        updated = await self.store.update(
            current_user().id, conversationId, time.time(), active_leaf_id=leaf, touch=False
        )
        if updated is None:
            raise ConversationNotFound(data={"conversationId": conversationId})
        return self.view(updated, messages)

    # Streaming answers

    # Streaming methods return their stream and @relayed serves it, passing a cancel on.

    @exposed("send")
    @relayed
    async def send(self, conversationId: str, message: str) -> AsyncGenerator[str | Final, None]:
        """Stream an answer to ``message``, appended to the active branch."""
        return await self.answers.open(conversationId, ask=self.chat._message(message).content)

    @exposed("edit")
    @relayed
    async def edit(
        self, conversationId: str, messageId: str, message: str
    ) -> AsyncGenerator[str | Final, None]:
        """A new version of user message ``messageId`` (a sibling) and a new answer to it."""
        question = self.chat._message(message).content

        def choose(record: ConversationRecord, tree: Tree) -> Turn:
            target = tree.by_id.get(messageId)
            if target is None or target.role != "user":
                raise MessageNotFound(
                    "No such user message in this conversation",
                    {"conversationId": conversationId, "messageId": messageId},
                )
            return Turn(target.parent_id, question, new=True)

        return await self.answers.open(conversationId, choose)

    @exposed("regenerate")
    @relayed
    async def regenerate(
        self, conversationId: str, messageId: str
    ) -> AsyncGenerator[str | Final, None]:
        """Another answer to the question of assistant message ``messageId`` (a sibling)."""

        def choose(record: ConversationRecord, tree: Tree) -> Turn:
            target = tree.by_id.get(messageId)
            parent = tree.by_id.get(target.parent_id or "") if target is not None else None
            if target is None or target.role != "assistant" or parent is None:
                raise MessageNotFound(
                    "No such assistant message in this conversation",
                    {"conversationId": conversationId, "messageId": messageId},
                )
            return Turn(parent.id, parent.content, new=False)

        return await self.answers.open(conversationId, choose)

    # Lifecycle (called by the server)

    async def start(self) -> None:
        await self.answers.recover(at_start=True)

    async def run_cleanup(self) -> None:
        """Retention: delete conversations idle longer than ``retention_days`` (not pinned)."""
        days = self.config.retention_days
        while True:
            await asyncio.sleep(self.config.cleanup_interval_seconds)
            try:
                await self.answers.recover()
                if days > 0:
                    removed = await self.store.cleanup(time.time() - days * 86400)
                    if removed:
                        log.info("retention removed %d conversations", removed)
            except Exception:
                log.exception("conversation cleanup failed")

    async def aclose(self) -> None:
        await self.answers.aclose()
