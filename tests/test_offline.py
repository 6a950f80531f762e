"""The offline provider: deterministic text, word-sized pieces, pacing that catches up."""

from __future__ import annotations

import asyncio
import time

from gateway.providers.base import ChatRequest, Message, ModelConfig
from gateway.providers.offline import OfflineProvider, compose_reply

REQUEST = ChatRequest(messages=(Message("system", "Be kind."), Message("user", "hello there")))


def _model(tps: float) -> ModelConfig:
    return ModelConfig(name="m", provider="offline", model="offline-echo", tokens_per_second=tps)


async def _pieces(provider: OfflineProvider, *, stall_after: int | None = None) -> list[str]:
    out = []
    async with asyncio.timeout(10):
        async for chunk in provider.stream(REQUEST):
            if chunk.text:
                out.append(chunk.text)
                if stall_after is not None and len(out) == stall_after:
                    time.sleep(0.3)  # the loop is blocked, as on an overloaded server
    return out


def test_the_same_prompt_always_gives_the_same_answer() -> None:
    """compose_reply is deterministic and quotes the prompt and the instructions."""
    first = compose_reply(REQUEST, model="m")
    assert first == compose_reply(REQUEST, model="m")
    assert 'You said: "hello there"' in first and 'My instructions: "Be kind."' in first


async def test_the_fast_model_streams_one_word_per_piece() -> None:
    """With no pacing, every piece is one word and the pieces rebuild the answer."""
    pieces = await _pieces(OfflineProvider(_model(0)))
    assert "".join(pieces) == compose_reply(REQUEST, model="m")
    assert all(len(p.split()) == 1 for p in pieces)


async def test_a_paced_model_sends_words_already_due_together_after_a_stall() -> None:
    """After the loop stalls, the words that fell due go out as one piece, nothing is lost."""
    pieces = await _pieces(OfflineProvider(_model(100)), stall_after=2)
    assert "".join(pieces) == compose_reply(REQUEST, model="m")
    assert len(pieces[2].split()) > 5  # about 30 words fell due during the 0.3 s stall


async def test_max_tokens_cuts_the_answer_with_finish_reason_length() -> None:
    """A request's max_tokens caps the words and ends with finish_reason length."""
    provider = OfflineProvider(_model(0))
    chunks = [c async for c in provider.stream(ChatRequest(REQUEST.messages, max_tokens=4))]
    assert len("".join(c.text for c in chunks).split()) == 4
    assert chunks[-1].finish_reason == "length"


async def test_asked_for_code_the_model_streams_a_fenced_block_that_runs() -> None:
    """A request for code gets a real, deterministic fenced block; the stream keeps its layout."""
    request = ChatRequest(messages=(Message("user", "write a python function please"),))
    reply = compose_reply(request, model="m")
    assert reply == compose_reply(request, model="m")
    assert "```python\n" in reply and reply.rstrip().endswith("```")
    assert "```" not in compose_reply(REQUEST, model="m")
    quoted = ChatRequest(messages=(Message("user", "render `inline code` please"),))
    assert "```" not in compose_reply(quoted, model="m")  # quoted, not asked for
    pieces = []
    async with asyncio.timeout(10):
        async for chunk in OfflineProvider(_model(0)).stream(request):
            pieces.append(chunk.text)
    streamed = "".join(pieces)
    assert streamed == reply
    code = streamed.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {}
    exec(compile(code.replace("print(", "result = ("), "<offline>", "exec"), namespace)
    assert namespace["result"] == "function python a write"  # the first four words, reversed
