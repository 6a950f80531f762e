"""Records as the wire shows them (camelCase), and exports in JSON and Markdown."""

from __future__ import annotations

import re
from typing import Any

import orjson

from gateway.conversations.store import ConversationRecord, MessageRecord
from gateway.conversations.tree import Tree

__all__ = ["conversation_view", "export", "message_view"]


def conversation_view(r: ConversationRecord) -> dict[str, Any]:
    return {
        "id": r.id,
        "title": r.title,
        "model": r.model,
        "systemPrompt": r.system_prompt,
        "params": r.params,
        "pinned": r.pinned,
        "archived": r.archived,
        "createdAt": r.created_at,
        "updatedAt": r.updated_at,
        "messageCount": r.message_count,
        "activeLeafId": r.active_leaf_id,
    }


def message_view(m: MessageRecord, tree: Tree) -> dict[str, Any]:
    siblings = tree.siblings(m)
    out: dict[str, Any] = {
        "id": m.id,
        "parentId": m.parent_id,
        "role": m.role,
        "content": m.content,
        "status": m.status,
        "createdAt": m.created_at,
        "siblingIds": siblings,
        "siblingIndex": siblings.index(m.id),
    }
    if m.model is not None:
        out["model"] = m.model
    if m.stream_id is not None:
        out["streamId"] = m.stream_id
    if m.usage is not None:
        out["usage"] = m.usage
    if m.finish_reason is not None:
        out["finishReason"] = m.finish_reason
    if m.result is not None:
        out["result"] = m.result
    return out


def _filename(title: str, ext: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", title).strip("-").lower()[:60] or "conversation"
    return f"{slug}.{ext}"


def export(record: ConversationRecord, messages: list[MessageRecord], fmt: str) -> dict[str, Any]:
    """``{format, filename, content}``: JSON holds the whole tree, Markdown the active branch."""
    tree = Tree(messages)
    if fmt == "json":
        doc = {
            "conversation": conversation_view(record),
            "messages": [message_view(m, tree) for m in messages],
        }
        content = orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()
        return {"format": "json", "filename": _filename(record.title, "json"), "content": content}
    lines = [f"# {record.title}", ""]
    if record.system_prompt:
        lines += [f"> System: {record.system_prompt}", ""]
    names = {"user": "You", "assistant": "Assistant", "system": "System"}
    for m in tree.branch(record.active_leaf_id):
        label = names.get(m.role, m.role)
        if m.role == "assistant" and m.status != "done":
            label += f" ({m.status})"
        lines += [f"## {label}", "", m.content, ""]
    return {
        "format": "markdown",
        "filename": _filename(record.title, "md"),
        "content": "\n".join(lines).rstrip() + "\n",
    }
