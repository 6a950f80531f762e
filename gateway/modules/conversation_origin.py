"""The origin framework's conversation journal under its own names, on ``chat.*``.

The session remembers the user's current conversation and a per-user system
prompt (both in the conversation store, so they outlive a restart). Unlike
the origin, ``archiveTopic`` keeps the messages: an archived conversation is
only hidden from the main list and ``restoreArchivedTopic`` brings it back.
"""

from __future__ import annotations

import time

from gateway.context import current_user
from gateway.conversations.store import ConversationRecord
from gateway.conversations.views import conversation_view, export
from gateway.errors import ConversationNotFound, InvalidParams
from gateway.modules.base import Module, exposed
from gateway.modules.conversation import ConversationModule

__all__ = ["OriginConversationModule"]


class OriginConversationModule(Module):
    namespace = "chat"

    def __init__(self, conversations: ConversationModule) -> None:
        self.c = conversations
        self.store = conversations.store

    async def _current(self, conversation_id: str | None) -> ConversationRecord:
        """The named conversation, else the session's current one."""
        user = current_user()
        if conversation_id is None:
            conversation_id = (await self.store.settings(user.id)).current_conversation_id
            if conversation_id is None:
                raise ConversationNotFound("There is no current conversation")
        record = await self.store.get(user.id, conversation_id)
        if record is None:
            raise ConversationNotFound(data={"conversationId": conversation_id})
        return record

    async def _set_current(self, conversation_id: str | None) -> None:
        settings = await self.store.settings(current_user().id)
        settings.current_conversation_id = conversation_id
        await self.store.save_settings(settings, time.time())

    @exposed("listConversations")
    async def list_conversations(self, archived: bool = False, limit: int = 50) -> dict:
        """{conversations, currentConversationId}: newest first (pinned first)."""
        page = await self.c.list_conversations(limit=limit, archived=archived)
        settings = await self.store.settings(current_user().id)
        return {
            "conversations": page["items"],
            "nextCursor": page["nextCursor"],
            "currentConversationId": settings.current_conversation_id,
        }

    @exposed("createNewConversation")
    async def create_new_conversation(
        self, title: str | None = None, systemPrompt: str | None = None
    ) -> dict:
        """A new conversation, which becomes the current one."""
        record = await self.c.create_record(title=title, system_prompt=systemPrompt)
        await self._set_current(record.id)
        return conversation_view(record)

    @exposed("switchToConversation")
    async def switch_to_conversation(self, conversationId: str) -> dict:
        """Make ``conversationId`` current; returns it with its active branch."""
        record, messages = await self.c._load(conversationId)
        await self._set_current(record.id)
        return self.c.view(record, messages)

    @exposed("clearCurrentConversation")
    async def clear_current_conversation(self) -> dict:
        """Forget which conversation is current (nothing is deleted)."""
        await self._set_current(None)
        return {"currentConversationId": None}

    @exposed("archiveTopic")
    async def archive_topic(self, conversationId: str | None = None) -> dict:
        """Archive a conversation (default: the current one). Its messages are kept."""
        record = await self._current(conversationId)
        settings = await self.store.settings(current_user().id)
        if settings.current_conversation_id == record.id:
            await self._set_current(None)
        return await self.c.archive(record.id, True)

    @exposed("restoreArchivedTopic")
    async def restore_archived_topic(self, conversationId: str) -> dict:
        """Bring an archived conversation back into the list."""
        return await self.c.archive(conversationId, False)

    @exposed("exportConversation")
    async def export_conversation(
        self, conversationId: str | None = None, format: str = "markdown"
    ) -> dict:
        """{format, filename, content} of a conversation (default: the current one)."""
        if format not in ("json", "markdown"):
            raise InvalidParams('format must be "json" or "markdown"')
        record = await self._current(conversationId)
        loaded = await self.store.load(current_user().id, record.id)
        if loaded is None:
            raise ConversationNotFound(data={"conversationId": record.id})
        return export(loaded[0], loaded[1], format)

    @exposed("generateConversationTitle")
    async def generate_conversation_title(self, conversationId: str | None = None) -> dict:
        """Title the conversation (default: the current one) from its first exchange now."""
        record = await self._current(conversationId)
        title = await self.c.answers.generate_now(record)
        return {"conversationId": record.id, "title": title}

    @exposed("setSystemPrompt")
    async def set_system_prompt(self, systemPrompt: str) -> dict:
        """The user's system prompt for new conversations ("" clears it)."""
        settings = await self.store.settings(current_user().id)
        settings.system_prompt = self.c._system_prompt(systemPrompt)
        await self.store.save_settings(settings, time.time())
        return {"systemPrompt": settings.system_prompt}

    @exposed("getSystemPrompt")
    async def get_system_prompt(self) -> dict:
        """The user's system prompt for new conversations (null: the default)."""
        settings = await self.store.settings(current_user().id)
        return {"systemPrompt": settings.system_prompt}
