"""A fake ``POST /v1/messages`` speaking Anthropic's streaming format.

Named events, each with a JSON ``data`` whose ``type`` repeats the name::

    message_start        {"message": {..., "content": [], "usage": {"input_tokens": N, ...}}}
    (with reasoning, extended thinking's block first:)
    content_block_start  {"index": 0, "content_block": {"type": "thinking", "thinking": "", ...}}
    content_block_delta  {"index": 0, "delta": {"type": "thinking_delta", "thinking": "..."}}
    content_block_delta  {"index": 0, "delta": {"type": "signature_delta", "signature": "..."}}
    content_block_stop   {"index": 0}
    content_block_start  {"index": i, "content_block": {"type": "text", "text": ""}}
    ping
    content_block_delta  {"index": 0, "delta": {"type": "text_delta", "text": "..."}}   (per piece)
    content_block_stop   {"index": 0}
    message_delta        {"delta": {"stop_reason": "end_turn", ...}, "usage": {"output_tokens": N}}
    message_stop

Errors, in a body or as ``event: error`` mid-stream, are
``{"type": "error", "error": {"type": ..., "message": ...}, "request_id": ...}``.
The key arrives in ``x-api-key``, or (SDK 2.x) as ``authorization: Bearer``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import FakeServer, Reply, sse

__all__ = ["AnthropicFake"]

_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


class AnthropicFake(FakeServer):
    """Anthropic's Messages endpoint; ``base_url`` is the bare origin, as the SDK expects."""

    path = "/v1/messages"
    provider = "anthropic"
    request_id_header = "request-id"
    malformed_event = b'event: content_block_delta\ndata: {"type": "content_block_delta", \n\n'

    def presented_key(self, headers: Mapping[str, str]) -> str:
        return headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")

    def error_body(self, status: int, kind: str | None, message: str | None) -> dict[str, Any]:
        kind = kind or _ERRORS.get(status, "api_error")
        return {
            "type": "error",
            "error": {"type": kind, "message": message or f"Fake {kind}"},
            "request_id": "req_fake",
        }

    def stream_error_event(self, kind: str) -> bytes:
        return sse(self.error_body(200, kind, "Overloaded"), "error")

    def events(self, reply: Reply, request: Any) -> tuple[list[bytes], list[bytes], list[bytes]]:
        start = {
            "type": "message_start",
            "message": {
                "id": "msg_fake",
                "type": "message",
                "role": "assistant",
                "model": request.get("model", "fake"),
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": reply.prompt_tokens,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "output_tokens": 1,
                },
            },
        }
        opening = [sse(start, "message_start")]
        index = 0
        if reply.reasoning:
            opening.append(_block_start(0, {"type": "thinking", "thinking": "", "signature": ""}))
            opening.append(sse({"type": "ping"}, "ping"))
            opening += [
                _delta(0, {"type": "thinking_delta", "thinking": piece})
                for piece in reply.reasoning
            ]
            opening.append(_delta(0, {"type": "signature_delta", "signature": "EqQBCgIYAhIM"}))
            opening.append(sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
            index = 1
        opening.append(_block_start(index, {"type": "text", "text": ""}))
        if not reply.reasoning:
            opening.append(sse({"type": "ping"}, "ping"))
        pieces = [_delta(index, {"type": "text_delta", "text": piece}) for piece in reply.text]
        closing = [
            sse({"type": "content_block_stop", "index": index}, "content_block_stop"),
            sse(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": reply.finish or "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": reply.completion},
                },
                "message_delta",
            ),
            sse({"type": "message_stop"}, "message_stop"),
        ]
        return opening, pieces, closing


def _block_start(index: int, block: dict[str, Any]) -> bytes:
    return sse(
        {"type": "content_block_start", "index": index, "content_block": block},
        "content_block_start",
    )


def _delta(index: int, delta: dict[str, Any]) -> bytes:
    return sse(
        {"type": "content_block_delta", "index": index, "delta": delta}, "content_block_delta"
    )
