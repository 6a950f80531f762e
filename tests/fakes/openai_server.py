"""A fake ``POST /v1/chat/completions`` speaking OpenAI's streaming format.

Every event is ``data: <chat.completion.chunk JSON>``: a first chunk with the
assistant role, one chunk per reasoning piece (``{"content": null,
"reasoning_content": ...}``, as DeepSeek and vLLM send it), one chunk per
text piece, a chunk with an empty delta and the finish reason, then (when
the request asked with ``stream_options.include_usage``) a chunk with empty
``choices`` and the usage, and finally
``data: [DONE]``. With ``include_usage`` every chunk carries ``"usage": null``
until the last. Errors are ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from . import FakeServer, Reply, sse

__all__ = ["OpenAIFake"]

_ERRORS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", None),
}


class OpenAIFake(FakeServer):
    """OpenAI's chat completions endpoint; ``base_url`` ends in ``/v1`` as the SDK expects."""

    path = "/v1/chat/completions"
    provider = "openai"
    base_path = "/v1"

    def presented_key(self, headers: Mapping[str, str]) -> str:
        return headers.get("authorization", "").removeprefix("Bearer ")

    def error_body(self, status: int, kind: str | None, message: str | None) -> dict[str, Any]:
        default_kind, code = _ERRORS.get(status, ("server_error", None))
        if message is None:
            message = (
                "Incorrect API key provided: sk-fake-****. You can find your API key at "
                "https://platform.openai.com/account/api-keys."
                if status == 401
                else f"Fake error {status}"
            )
        return {
            "error": {"message": message, "type": kind or default_kind, "param": None, "code": code}
        }

    def stream_error_event(self, kind: str) -> bytes:
        return sse({"error": {"message": "The server had an error", "type": kind, "code": None}})

    def events(self, reply: Reply, request: Any) -> tuple[list[bytes], list[bytes], list[bytes]]:
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            body: dict[str, Any] = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": created,
                "model": request.get("model", "fake"),
                "system_fingerprint": "fp_fake",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if include_usage:
                body["usage"] = None
            return body

        opening = [sse(chunk({"role": "assistant", "content": "", "refusal": None}))]
        opening += [
            sse(chunk({"content": None, "reasoning_content": piece})) for piece in reply.reasoning
        ]
        pieces = [sse(chunk({"content": piece})) for piece in reply.text]
        closing = [sse(chunk({}, reply.finish or "stop"))]
        if include_usage and reply.usage:
            final = chunk({})
            final["choices"] = []
            final["usage"] = {
                "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion,
                "total_tokens": reply.prompt_tokens + reply.completion,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": len(reply.reasoning),
                    "audio_tokens": 0,
                },
            }
            closing.append(sse(final))
        closing.append(sse("[DONE]"))
        return opening, pieces, closing
