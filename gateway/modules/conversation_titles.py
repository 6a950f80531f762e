"""Conversation titles: asked of the model after the first answer, with a timeout.

Offline models (and any failure or timeout) get a deterministic short title
made from the first question, so a title always appears.
"""

from __future__ import annotations

import asyncio
import logging
import re

from gateway.providers.base import ChatRequest, Message
from gateway.providers.router import ModelRouter

__all__ = ["fallback_title", "generate_title"]

log = logging.getLogger(__name__)

MAX_TITLE_CHARS = 60
_PROMPT = (
    "Give this conversation a short title of at most six words. "
    "Answer with the title only, without quotes."
)


def fallback_title(question: str) -> str:
    """The first words of the question: at most 6 words and 60 characters."""
    words = re.sub(r"\s+", " ", question).strip().split(" ")[:6]
    title = " ".join(words).strip(" .,:;!?-")
    if len(title) > MAX_TITLE_CHARS:
        title = title[: MAX_TITLE_CHARS - 1].rstrip() + "…"
    return title[:1].upper() + title[1:] if title else "Untitled"


def _clean(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    line = line.strip().strip("\"'“”#*").strip()
    return line[:MAX_TITLE_CHARS]


async def generate_title(
    router: ModelRouter, model: str, question: str, answer: str, *, timeout: float
) -> str:
    """A title for a conversation that starts with ``question`` -> ``answer``."""
    config = router.get(model)
    if config is None or config.provider == "offline" or not router.is_available(model):
        return fallback_title(question)
    request = ChatRequest(
        messages=(
            Message("system", _PROMPT),
            Message("user", f"Question: {question[:2000]}\n\nAnswer: {answer[:2000]}"),
        ),
        max_tokens=24,
    )
    parts: list[str] = []
    try:
        async with asyncio.timeout(timeout):
            stream = router.open(model, request)
            try:
                async for chunk in stream:
                    if chunk.text:
                        parts.append(chunk.text)
            finally:
                await stream.aclose()
    except Exception as exc:
        log.info(
            "title generation with %s failed (%s); using the question", model, type(exc).__name__
        )
        return fallback_title(question)
    return _clean("".join(parts)) or fallback_title(question)
