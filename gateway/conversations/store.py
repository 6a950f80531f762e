"""The conversation store behind a small interface, so databases can be swapped.

Every method that reads or changes a conversation takes the owner's user id
and matches it in the query: another user's conversation is indistinguishable
from one that does not exist (``None`` / ``False``). Stores never read the
request context. Times are Unix seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from gateway.conversations.tree import Tree

__all__ = [
    "STATUSES",
    "AnswerStart",
    "Ask",
    "ConversationRecord",
    "ConversationStore",
    "MessageRecord",
    "NewMessage",
    "Page",
    "Plan",
    "Status",
    "StoreLimits",
    "UserSettings",
]

Status = Literal["done", "streaming", "unfinished", "error", "interrupted"]
STATUSES: tuple[str, ...] = ("done", "streaming", "unfinished", "error", "interrupted")


@dataclass(frozen=True, slots=True)
class StoreLimits:
    """What one user may keep; the store refuses writes past these."""

    conversations_per_user: int = 10_000
    messages_per_conversation: int = 2_000


@dataclass(slots=True)
class ConversationRecord:
    id: str
    user_id: str
    title: str
    title_auto: bool
    """True while the title is the placeholder (a generated title may replace it)."""
    model: str
    system_prompt: str | None
    params: dict[str, Any]
    pinned: bool
    archived: bool
    created_at: float
    updated_at: float
    message_count: int
    active_leaf_id: str | None


@dataclass(slots=True)
class MessageRecord:
    id: str
    conversation_id: str
    parent_id: str | None
    seq: int
    """Creation order within the conversation."""
    role: str
    content: str
    status: str
    model: str | None
    stream_id: str | None
    created_at: float
    updated_at: float
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    result: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Page:
    items: list[ConversationRecord]
    next_cursor: str | None


@dataclass(slots=True)
class UserSettings:
    user_id: str
    current_conversation_id: str | None = None
    system_prompt: str | None = None


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to append (see :meth:`ConversationStore.add_messages`)."""

    role: str
    content: str
    status: str = "done"
    model: str | None = None
    stream_id: str | None = None
    parent: str | None = None
    """Parent id; ``None`` for a root. In a batch, "@prev" means the message before it."""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class AnswerStart:
    """What :meth:`ConversationStore.start_answer` read and wrote."""

    record: ConversationRecord
    """The conversation as it was before the new messages."""
    tree: Tree
    added: list[MessageRecord]


@dataclass(frozen=True, slots=True)
class Ask:
    """A question appended under the active leaf with its answer's ``streaming``
    placeholder (:meth:`ConversationStore.start_send`)."""

    question: str
    stream_id: str
    models: tuple[str, ...]
    """Models that can answer: the conversation's own if it is one, else ``fallback``."""
    fallback: str


Plan = Callable[[ConversationRecord, "Tree"], list[NewMessage]]
"""Chooses the messages to append, given the conversation as stored (may raise)."""


class ConversationStore(Protocol):
    """Where conversations live (SQLite or PostgreSQL, see :mod:`gateway.conversations`)."""

    async def start(self) -> list[int]:
        """Connect and apply pending migrations; the versions applied."""
        ...

    async def create(
        self,
        user_id: str,
        *,
        title: str | None,
        model: str,
        system_prompt: str | None,
        params: dict[str, Any],
        now: float,
    ) -> ConversationRecord:
        """A new, empty conversation; raises ConversationLimit past the per-user limit."""
        ...

    async def list_page(
        self,
        user_id: str,
        *,
        cursor: str | None,
        limit: int,
        query: str | None,
        archived: bool,
    ) -> Page:
        """Pinned first, then most recently updated; ``query`` matches title or message text."""
        ...

    async def get(self, user_id: str, conversation_id: str) -> ConversationRecord | None: ...

    async def messages(self, user_id: str, conversation_id: str) -> list[MessageRecord] | None:
        """Every message of the conversation in creation order (None: not found)."""
        ...

    async def load(
        self, user_id: str, conversation_id: str
    ) -> tuple[ConversationRecord, list[MessageRecord]] | None:
        """The conversation and its messages, read together."""
        ...

    async def update(
        self, user_id: str, conversation_id: str, now: float, **fields: Any
    ) -> ConversationRecord | None:
        """Change columns (title, title_auto, model, system_prompt, params, pinned, archived,
        active_leaf_id); ``touch=False`` in ``fields`` keeps ``updated_at``."""
        ...

    async def delete(self, user_id: str, conversation_id: str) -> bool: ...

    async def add_messages(
        self,
        user_id: str,
        conversation_id: str,
        new: list[NewMessage],
        now: float,
        *,
        node: str | None = None,
    ) -> list[MessageRecord] | None:
        """Append messages in one transaction and make the last one the active leaf.

        Raises ConversationLimit past messages-per-conversation; None: not found.
        """
        ...

    async def start_answer(
        self,
        user_id: str,
        conversation_id: str,
        plan: Plan,
        now: float,
        *,
        node: str | None,
    ) -> AnswerStart | None:
        """Read the conversation and its tree, append what ``plan(record, tree)`` returns
        (None: not found). The answer's history is the tree that was read."""
        ...

    async def start_send(
        self, user_id: str, conversation_id: str, ask: Ask, now: float, *, node: str | None
    ) -> AnswerStart | None:
        """``start_answer`` for the commonest plan, a question under the active leaf, which
        a store may run in fewer round trips (PostgreSQL: one)."""
        ...

    async def finish_message(
        self,
        message_id: str,
        *,
        content: str,
        status: str,
        now: float,
        usage: dict[str, Any] | None = None,
        finish_reason: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        """Record how a streamed answer ended (one write, after the last delta)."""
        ...

    async def fork(
        self, user_id: str, conversation_id: str, message_id: str, now: float
    ) -> ConversationRecord | None:
        """A new conversation holding the branch from the root to ``message_id``."""
        ...

    async def settings(self, user_id: str) -> UserSettings: ...

    async def save_settings(self, settings: UserSettings, now: float) -> None: ...

    async def mark_interrupted(
        self, *, node: str | None = None, stale_before: float | None = None, now: float
    ) -> int:
        """Mark answers left ``streaming`` as ``interrupted``: those of ``node`` or not
        updated since ``stale_before``; every one when both are None. How many."""
        ...

    async def cleanup(self, older_than: float) -> int:
        """Delete conversations (not pinned) not updated since ``older_than``; how many."""
        ...

    async def close(self) -> None: ...
