"""The ``stream.*`` methods: resume, cancel and list the caller's own streams."""

from __future__ import annotations

from gateway import metrics
from gateway.context import current_user
from gateway.errors import InvalidParams, StreamNotFound
from gateway.jsonrpc.registry import Follow
from gateway.modules.base import Module, exposed
from gateway.streams.hub import StreamHub

__all__ = ["StreamModule"]


class StreamModule(Module):
    namespace = "stream"

    def __init__(self, hub: StreamHub) -> None:
        self.hub = hub

    @exposed("resume")
    async def resume(self, streamId: str, after: int = -1) -> Follow:
        """Replay your stream after position ``after`` (-1: from the start), then follow it live."""
        if after < -1:
            raise InvalidParams("after must be -1 or a position (the last seq you received)")
        try:
            await self.hub.owned(streamId, current_user().id)
        except StreamNotFound:
            metrics.stream_resume("not_found")
            raise
        metrics.stream_resume("resumed")
        return Follow(streamId, after)

    @exposed("cancel")
    async def cancel(self, streamId: str) -> dict:
        """Stop your stream from any connection: {"cancelled": true} if it was running."""
        return {"cancelled": await self.hub.cancel_owned(streamId, current_user().id)}

    @exposed("list")
    async def list(self) -> list:
        """Your running and recently finished streams, newest first."""
        rows = await self.hub.log.list(current_user().id)
        return [row.public() for row in rows]
