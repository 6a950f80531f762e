"""The baseline for bench/run.py: plain ``websockets`` + orjson, no gateway logic.

It answers the same frames the gateway sends for the calls the benchmark
makes -- ``stream.delta`` notifications and the final JSON-RPC response for
``chat.postChat``, a result for ``chat.setModel`` and ``chat.getCurrentModel``
-- with none of the gateway's machinery: no auth (the Authorization header is
ignored), no sessions, no registry or parameter binding, no rate limits, no
outbound queue (each frame is awaited on ``ws.send`` directly), no token
counting. The reply text is the offline model's (``compose_reply``), paced the
same way (each word waits for its absolute deadline, start + (i+1)/tokens_per_second,
0 = no delay), so both servers stream identical words at identical rates.

    python bench/raw_server.py --port 0

prints ``Raw listening on ws://127.0.0.1:PORT/ws`` when ready and serves until
SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import sys
from pathlib import Path

import orjson
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gateway.providers.base import ChatRequest, Message
from gateway.providers.offline import compose_reply

SYSTEM_PROMPT = "You are a helpful assistant."  # the gateway's default system prompt
PACING = {"offline-fast": 0.0, "offline-paced20": 20.0, "offline": 30.0}
STREAMING = frozenset(
    {
        "chat.postChat",
        "chat.chatWithHistory",
        "chat.postChatWithHistoryAndUser",
        "chat.postChatWithParams",
    }
)


def _model_info(name: str) -> dict:
    # The same object the gateway answers for chat.getCurrentModel.
    return {
        "name": name,
        "provider": "offline",
        "model": "offline-echo",
        "contextWindow": 8192,
        "maxOutputTokens": 512,
        "available": True,
        "description": "Offline model, no delay (tests a and d).",
    }


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _stream(ws: ServerConnection, id_: object, message: str, model: str) -> None:
    tps = PACING.get(model, 0.0)
    delay = 1.0 / tps if tps > 0 else 0.0
    request = ChatRequest(messages=(Message("system", SYSTEM_PROMPT), Message("user", message)))
    words = compose_reply(request, model=model).split(" ")
    dumps = orjson.dumps
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        for i, word in enumerate(words):
            await asyncio.sleep(max(0.0, start + (i + 1) * delay - loop.time()))
            frame = dumps(
                {
                    "jsonrpc": "2.0",
                    "method": "stream.delta",
                    "params": {"id": id_, "seq": i, "text": word if i == 0 else " " + word},
                }
            )
            await ws.send(frame, text=True)
        n = len(words)
        result = {
            "finishReason": "stop",
            "model": model,
            "usage": {
                "promptTokens": 0,
                "completionTokens": n,
                "totalTokens": n,
                "source": "estimate",
            },
            "droppedTurns": 0,
        }
        await ws.send(dumps({"jsonrpc": "2.0", "result": result, "id": id_}), text=True)
    except ConnectionClosed:
        pass


async def handler(ws: ServerConnection) -> None:
    model = "offline-fast"
    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    dumps = orjson.dumps
    try:
        async for text in ws:
            try:
                request = orjson.loads(text)
                method = request["method"]
                id_ = request.get("id")
                params = request.get("params")
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
                await ws.send(
                    b'{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}',
                    text=True,
                )
                continue
            if method in STREAMING:
                message = params[0] if isinstance(params, list) else params["message"]
                task = loop.create_task(_stream(ws, id_, message, model))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                continue
            if method == "chat.setModel":
                model = params[0] if isinstance(params, list) else params["modelName"]
                result: object = True
            elif method == "chat.getCurrentModel":
                result = _model_info(model)
            else:
                await ws.send(
                    dumps(
                        {
                            "jsonrpc": "2.0",
                            "error": {"code": -32601, "message": f"Method not found: {method}"},
                            "id": id_,
                        }
                    ),
                    text=True,
                )
                continue
            await ws.send(dumps({"jsonrpc": "2.0", "result": result, "id": id_}), text=True)
    except ConnectionClosed:
        pass
    finally:
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


async def main(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Same transport settings as the gateway: 1 MiB frames, pings 20/20 s, no compression.
    async with serve(
        handler,
        host,
        port,
        max_size=1024 * 1024,
        ping_interval=20.0,
        ping_timeout=20.0,
        compression=None,
    ) as server:
        bound = server.sockets[0].getsockname()[1]
        print(f"Raw listening on ws://{host}:{bound}/ws", flush=True)
        await stop.wait()
        server.close(close_connections=True)
        try:
            async with asyncio.timeout(5.0):
                await server.wait_closed()
        except TimeoutError:
            pass


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    raise_nofile()
    asyncio.run(main(args.host, args.port))
