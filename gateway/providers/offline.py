"""A provider that needs no network and no key: deterministic text built from the prompt."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator

from gateway.providers.base import ChatRequest, Chunk, ModelConfig

__all__ = ["OfflineProvider", "code_sample", "compose_reply"]

_OPENERS = (
    "Here is what I make of it.",
    "Let me think about that.",
    "Good question.",
    "Sure.",
)
_BODY = (
    "I am the offline model of this gateway, so I answer without any network or key.",
    "Every word you read was streamed to you as its own frame.",
    "Switch models with chat.setModel, or stop me at any time with rpc.cancel.",
    "A real provider would answer this properly; I can only reflect it back.",
)


_ASKS_FOR_CODE = re.compile(
    r"\b(code|function|script|program|snippet|implement|sql|python|"
    r"javascript|typescript|js|bash|shell)\b",
    re.IGNORECASE,
)
_SAMPLES = {
    "python": (
        "def reverse_words(text: str) -> str:\n"
        '    """Return the words of text in reverse order."""\n'
        '    return " ".join(reversed(text.split()))\n'
        "\n"
        "\n"
        'print(reverse_words("{words}"))'
    ),
    "javascript": (
        "function reverseWords(text) {{\n"
        "  // Return the words of text in reverse order.\n"
        '  return text.split(/\\s+/).reverse().join(" ");\n'
        "}}\n"
        "\n"
        'console.log(reverseWords("{words}"));'
    ),
    "bash": (
        "#!/usr/bin/env bash\n"
        "# Print the words of a sentence in reverse order.\n"
        "words=({words})\n"
        'for (( i=${{#words[@]}}-1; i>=0; i-- )); do printf "%s " "${{words[i]}}"; done\n'
        "echo"
    ),
    "sql": (
        "-- The ten most recent conversations of one user.\n"
        "SELECT id, title, updated_at\n"
        "FROM conversations\n"
        "WHERE user_id = 'local'\n"
        "ORDER BY updated_at DESC\n"
        "LIMIT 10;"
    ),
}
_LANGUAGES = (
    ("javascript", ("javascript", "typescript", "js", "node")),
    ("bash", ("bash", "shell", "sh")),
    ("sql", ("sql", "query", "database")),
    ("python", ()),
)


def code_sample(question: str) -> str | None:
    """A fenced code block when ``question`` asks for code, else None (deterministic).

    Text in backticks is quoted, not asked for: "show `inline code`" gets no sample.
    """
    if not _ASKS_FOR_CODE.search(re.sub(r"`[^`]*`", " ", question)):
        return None
    lowered = set(re.findall(r"[a-z]+", question.lower()))
    language = next(lang for lang, names in _LANGUAGES if not names or lowered & set(names))
    words = " ".join(re.findall(r"[A-Za-z]+", question)[:4]) or "hello offline world"
    body = _SAMPLES[language].format(words=words)
    return f"Here is a small {language} example:\n\n```{language}\n{body}\n```\n"


def compose_reply(request: ChatRequest, *, model: str) -> str:
    """The whole answer for ``request``: the same prompt always gives the same text."""
    user_turns = [m.content for m in request.messages if m.role == "user"]
    last = user_turns[-1] if user_turns else ""
    system = " ".join(m.content for m in request.messages if m.role == "system")
    digest = hashlib.sha256("\x00".join(m.content for m in request.messages).encode()).digest()
    quoted = " ".join(last.split()[:40])
    parts = [
        _OPENERS[digest[0] % len(_OPENERS)],
        f'You said: "{quoted}".' if quoted else "You said nothing at all.",
        f"This conversation has {len(request.messages)} messages and I am {model}.",
        f'My instructions: "{" ".join(system.split()[:40])}".' if system else "",
        _BODY[digest[1] % len(_BODY)],
        _BODY[(digest[1] + 1) % len(_BODY)],
    ]
    reply = " ".join(p for p in parts if p)
    sample = code_sample(last)
    return f"{reply}\n\n{sample}" if sample else reply


class OfflineProvider:
    """Streams :func:`compose_reply` word by word, paced at ``tokens_per_second`` (0 = no delay)."""

    def __init__(self, config: ModelConfig) -> None:
        self._config = config
        self._delay = 1.0 / config.tokens_per_second if config.tokens_per_second > 0 else 0.0

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        words = compose_reply(request, model=self._config.name).split(" ")
        limit = request.max_tokens or self._config.max_output_tokens
        finish = "stop"
        if len(words) > limit:
            words, finish = words[:limit], "length"
        loop = asyncio.get_running_loop()
        start = loop.time()
        i = 0
        while i < len(words):
            # Pace against absolute deadlines, so one late wake-up does not delay every later
            # word; always yield to the loop, so a fast stream never starves pings or others.
            await asyncio.sleep(max(0.0, start + (i + 1) * self._delay - loop.time()))
            # Words already due when the loop is late go out together, as a real upstream
            # sends a burst after a stall: an overloaded server writes fewer frames.
            end = i + 1
            if self._delay:
                now = loop.time()
                while end < len(words) and start + (end + 1) * self._delay <= now:
                    end += 1
            text = " ".join(words[i:end])
            yield Chunk(text=text if i == 0 else " " + text)
            i = end
        yield Chunk(finish_reason=finish)

    async def aclose(self) -> None:
        return None
