"""The message tree: branches, siblings and leaves, computed from one conversation's rows."""

from __future__ import annotations

from collections import defaultdict

from gateway.conversations.store import MessageRecord

__all__ = ["Tree"]


class Tree:
    """An index over one conversation's messages (given in creation order)."""

    def __init__(self, messages: list[MessageRecord]) -> None:
        self.messages = messages
        self.by_id = {m.id: m for m in messages}
        self.children: defaultdict[str | None, list[MessageRecord]] = defaultdict(list)
        for m in messages:
            self.children[m.parent_id].append(m)

    def branch(self, leaf_id: str | None) -> list[MessageRecord]:
        """Root -> ``leaf_id``; empty for None or an unknown id."""
        path = []
        seen: set[str] = set()
        node = self.by_id.get(leaf_id) if leaf_id else None
        while node is not None and node.id not in seen:
            seen.add(node.id)
            path.append(node)
            node = self.by_id.get(node.parent_id) if node.parent_id else None
        path.reverse()
        return path

    def siblings(self, message: MessageRecord) -> list[str]:
        """Ids of messages with the same parent and role, in creation order (incl. itself)."""
        return [m.id for m in self.children[message.parent_id] if m.role == message.role]

    def newest_leaf(self, message_id: str) -> str:
        """The newest deepest descendant of ``message_id`` (itself when it has none).

        At each step the newest child is followed, so re-selecting a branch lands on
        the answer last written in it.
        """
        node = self.by_id[message_id]
        while self.children.get(node.id):
            node = self.children[node.id][-1]
        return node.id
