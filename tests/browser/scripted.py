"""A scripted stand-in for the gateway, over real sockets: the page's own files over HTTP and
a WebSocket at ``/ws`` answering the calls the page makes with frames a test chooses.

Used where the real gateway cannot be made to send something yet (reasoning deltas from a
model that thinks aloud). It speaks the wire protocol of protocol.md; nothing in the page
is patched. Runs its own asyncio loop in a thread, like the browser's other end would.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import threading
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

WEB = Path(__file__).resolve().parents[2] / "web"
Frames = list[dict[str, Any]]
"""What a scripted streaming call sends: ``stream.delta`` params without ``id``/``seq``."""


class ScriptedGateway:
    """Answers login, models and conversations itself; ``conversation.send`` streams
    ``deltas`` (each waiting for ``gate`` first when it is a :class:`threading.Event`)."""

    def __init__(self) -> None:
        self.deltas: list[dict[str, Any] | threading.Event] = []
        self.result: dict[str, Any] = {}
        self.port = 0
        self.received: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._messages: list[dict[str, Any]] = []
        self._conversation: dict[str, Any] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ScriptedGateway:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("scripted gateway did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        stop = self._stop
        if stop is not None:
            self._loop.call_soon_threadsafe(stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with serve(self._session, "127.0.0.1", 0, process_request=self._http) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._started.set()
            await self._stop.wait()

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/ws":
            return None
        relative = request.path.split("?")[0].lstrip("/") or "index.html"
        target = (WEB / relative).resolve()
        if not target.is_relative_to(WEB) or not target.is_file():
            return Response(404, "Not Found", Headers({"Content-Length": "0"}), b"")
        body = target.read_bytes()
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        headers = Headers({"Content-Type": kind, "Content-Length": str(len(body))})
        return Response(HTTPStatus.OK.value, "OK", headers, body)

    async def _session(self, ws: ServerConnection) -> None:
        async for raw in ws:
            frame = json.loads(raw)
            self.received.append(frame)
            if "id" not in frame:
                continue
            handler: Callable[..., Any] | None = getattr(
                self, "_" + frame["method"].replace(".", "_"), None
            )
            if handler is None:
                error = {"code": -32601, "message": "Method not found"}
                await ws.send(json.dumps({"jsonrpc": "2.0", "id": frame["id"], "error": error}))
                continue
            result = await handler(ws, frame["id"], frame.get("params") or {})
            await ws.send(json.dumps({"jsonrpc": "2.0", "id": frame["id"], "result": result}))

    # The calls the page makes

    async def _auth_login(self, ws: Any, rid: int, p: dict[str, Any]) -> Any:
        return {"user": {"id": "rhea", "roles": []}}

    async def _chat_listModels(self, ws: Any, rid: int, p: dict[str, Any]) -> Any:
        return [{"name": "thinker", "provider": "openai", "model": "r1", "available": True}]

    async def _chat_getCurrentModel(self, ws: Any, rid: int, p: dict[str, Any]) -> Any:
        return {"name": "thinker"}

    async def _conversation_list(self, ws: Any, rid: int, p: dict[str, Any]) -> Any:
        return {"items": [self._conversation] if self._conversation else [], "nextCursor": None}

    async def _conversation_create(self, ws: Any, rid: int, p: dict[str, Any]) -> Any:
        self._conversation = {
            "id": "c1",
            "title": "",
            "model": "thinker",
            "systemPrompt": "",
            "params": {},
            "pinned": False,
            "archived": False,
            "createdAt": 1.0,
            "updatedAt": 1.0,
            "messageCount": 0,
            "activeLeafId": None,
        }
        return self._conversation

    async def _conversation_get(self, ws: Any, rid: int, p: dict[str, Any]) -> Any:
        return {"conversation": self._conversation, "messages": self._messages}

    async def _conversation_send(self, ws: Any, rid: int, p: dict[str, Any]) -> Any:
        seq = 0
        text = ""
        for step in self.deltas:
            if isinstance(step, threading.Event):
                await asyncio.to_thread(step.wait, 15)
                continue
            text += step.get("text", "")
            params = {"id": rid, "seq": seq, **step}
            await ws.send(
                json.dumps({"jsonrpc": "2.0", "method": "stream.delta", "params": params})
            )
            seq += 1
        ids = {"conversationId": "c1", "userMessageId": "m1", "assistantMessageId": "m2"}
        base = {"siblingIds": [], "siblingIndex": 0, "createdAt": 1.0}
        self._messages = [
            {**base, "id": "m1", "parentId": None, "role": "user", "content": p["message"],
             "status": "done", "siblingIds": ["m1"]},
            {**base, "id": "m2", "parentId": "m1", "role": "assistant", "content": text,
             "status": "done", "siblingIds": ["m2"], "model": "thinker",
             "finishReason": "stop", "result": self.result},
        ]  # fmt: skip
        assert self._conversation is not None
        self._conversation = {**self._conversation, "messageCount": 2, "activeLeafId": "m2"}
        return {**self.result, **ids}
