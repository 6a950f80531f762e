"""Server-sent events, split from a byte stream with as little work per event as possible.

The providers read the raw HTTP response body and need only a few fields of
each event, so they skip the SDKs' typed decoders: :class:`EventSplitter`
cuts the bytes into events and gives each event's name and data, and the
provider decodes the data with orjson. Both providers' APIs send
``data: <json>`` events (Anthropic names them with ``event:``) separated by
blank lines; comment lines (``: keep-alive``) and unknown fields are
skipped; CRLF line ends are accepted.
"""

from __future__ import annotations

__all__ = ["EventSplitter"]


class EventSplitter:
    """Feed it the body's bytes as they arrive; get back the events they complete."""

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """``(event name, data)`` of every event completed by ``data`` (name ``b""`` if none)."""
        if self._tail:
            data = self._tail + data
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        blocks = data.split(b"\n\n")
        self._tail = blocks.pop()
        events = []
        for block in blocks:
            if block.startswith(b"data: ") and b"\n" not in block:
                events.append((b"", block[6:]))  # the common case: one data line, no name
            elif block:
                event = _parse(block)
                if event is not None:
                    events.append(event)
        return events


def _parse(block: bytes) -> tuple[bytes, bytes] | None:
    name = b""
    data: list[bytes] = []
    for line in block.split(b"\n"):
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value
    if not data:
        return None
    return name, b"\n".join(data)
