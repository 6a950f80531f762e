"""Resumable streams on one process (memory log), over real sockets.

A connection is cut abruptly (``transport.abort()``: no close frame, as when
a phone changes networks) mid-answer; the answer keeps running and a new
connection resumes it with ``stream.resume`` after the last seq it saw. The
deterministic offline model lets every resumed text be compared with an
uninterrupted run of the same prompt.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from gateway.config import DEFAULT_MODELS
from gateway.jsonrpc import Final
from gateway.modules.base import Module, exposed, register_module
from gateway.server.app import Gateway
from tests.fakes import Reply
from tests.fakes.openai_server import OpenAIFake
from tests.support import RawClient, assert_positions, gateway_server, raw_client
from tests.test_gateway_providers import provider_gateway

TIMEOUT = 20.0
PACED = replace(DEFAULT_MODELS[0], name="offline-100", tokens_per_second=100.0)
"""The offline model at 100 words/s: an answer takes about half a second."""
MODELS = (*DEFAULT_MODELS, PACED)
MANY = {"connections_per_user": 400, "streams_per_user": 400}


class Count(Module):
    """Yields ``n`` numbered pieces of ``size`` characters without pacing (a buffered upstream)."""

    namespace = "count"

    @exposed("up")
    async def up(self, n: int, size: int = 1) -> AsyncIterator[str | Final]:
        """Yield pieces "<i>:xxx…;" for i in 0..n-1."""
        for i in range(n):
            await asyncio.sleep(0)
            yield piece(i, size)


def piece(i: int, size: int) -> str:
    return f"{i}:" + "x" * size + ";"


def without_id(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "streamId"}


async def start_and_cut(
    gw: Gateway, method: str, params: Any, cut_after: int, token: str = "tok-alice"
) -> tuple[str, list[dict[str, Any]], dict[str, Any] | None]:
    """Start a stream, read ``cut_after`` deltas, then drop the socket with no close frame.

    Returns the stream id, the deltas seen, and the final response if it came first.
    """
    async with raw_client(gw, token) as client:
        id = await client.request(method, params)
        deltas: list[dict[str, Any]] = []
        while len(deltas) < cut_after:
            frame = await client.recv()
            if frame.get("method") == "stream.delta":
                deltas.append(frame["params"])
            elif frame.get("id") == id:
                return deltas[0]["streamId"], deltas, frame
        client.ws.transport.abort()
    return deltas[0]["streamId"], deltas, None


async def resume(
    gw: Gateway, stream_id: str, after: int, token: str = "tok-alice"
) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
    async with raw_client(gw, token) as client:
        return await client.stream("stream.resume", {"streamId": stream_id, "after": after})


async def uninterrupted(gw: Gateway, method: str, params: Any) -> tuple[str, dict[str, Any]]:
    async with raw_client(gw) as client:
        text, _, final = await client.stream(method, params)
    return text, final["result"]


async def set_model(gw: Gateway, name: str, token: str = "tok-alice") -> None:
    async with raw_client(gw, token) as client:
        assert (await client.call("chat.setModel", [name]))["result"] is True


async def test_a_connection_cut_mid_answer_resumes_with_the_whole_text() -> None:
    """Cut after 3 deltas, resume after the last seq: the text and result match an unbroken run."""
    async with gateway_server(models=MODELS) as gw:
        async with asyncio.timeout(TIMEOUT):
            await set_model(gw, "offline-100")
            expected, expected_result = await uninterrupted(gw, "chat.postChat", ["hello there"])
            stream_id, before, final = await start_and_cut(gw, "chat.postChat", ["hello there"], 3)
            assert final is None, "the answer ended before the cut"
            text, after, response = await resume(gw, stream_id, before[-1]["seq"])
    assert "".join(d["text"] for d in before) + text == expected
    assert_positions(before + after)
    assert after[0]["streamId"] == stream_id
    assert response["result"]["streamId"] == stream_id
    assert without_id(response["result"]) == without_id(expected_result)


async def test_a_hundred_answers_cut_at_random_points_all_resume_exactly() -> None:
    """100 concurrent answers, each cut at a random delta and resumed: 0 lost, 0 repeated."""
    rng = random.Random(9)
    messages = [f"question number {i} about resumable streams" for i in range(100)]
    cuts = [rng.randint(1, 12) for _ in messages]

    async def one(message: str, cut: int) -> tuple[str, str, list[dict[str, Any]]]:
        stream_id, before, final = await start_and_cut(gw, "chat.postChat", [message], cut)
        after = before[-1]["seq"]
        text, deltas, response = await resume(gw, stream_id, after)
        if final is not None:
            assert response["result"] == final["result"]
        assert response["result"]["finishReason"] == "stop"
        return "".join(d["text"] for d in before), text, before + deltas

    async with gateway_server(models=MODELS, **MANY) as gw:
        async with asyncio.timeout(60):
            await set_model(gw, "offline-100")
            expected = await asyncio.gather(
                *(uninterrupted(gw, "chat.postChat", [m]) for m in messages)
            )
            runs = await asyncio.gather(*(one(m, c) for m, c in zip(messages, cuts, strict=True)))
    lost = repeated = 0
    for (want, _), (head, tail, deltas) in zip(expected, runs, strict=True):
        assert_positions(deltas)
        got = head + tail
        lost += max(0, len(want) - len(got))
        repeated += max(0, len(got) - len(want))
        assert got == want
    assert lost == 0 and repeated == 0


async def test_a_lagging_reader_whose_deltas_merged_resumes_without_loss() -> None:
    """A reader that lagged (merged frames, seq skipping) resumes after its last seq exactly."""
    n, size = 1500, 8192  # more than the socket buffers hold
    async with gateway_server() as gw:
        register_module(gw.registry, Count())
        async with asyncio.timeout(TIMEOUT):
            async with raw_client(gw, max_queue=1) as client:
                await client.request("count.up", {"n": n, "size": size})
                conn = next(iter(gw.connections))
                while not conn.outbound.merged:  # lag until the socket buffers are full
                    await asyncio.sleep(0.05)
                before: list[dict[str, Any]] = []
                while not any(len(d["text"]) > 2 * size for d in before):
                    before.append((await client.recv())["params"])
                client.ws.transport.abort()
            stream_id = before[0]["streamId"]
            text, after, response = await resume(gw, stream_id, before[-1]["seq"])
    seqs = [d["seq"] for d in before]
    assert any(b - a > 1 for a, b in itertools.pairwise(seqs))  # some frames merged
    assert "".join(d["text"] for d in before) + text == "".join(piece(i, size) for i in range(n))
    assert_positions(before + after)
    assert after[-1]["seq"] == n - 1
    assert response["result"] == {"finishReason": "stop", "streamId": stream_id}


async def test_resume_after_the_end_replays_the_whole_answer_and_its_result() -> None:
    """A finished stream replays whole from -1, nothing after its last seq; the same result."""
    async with gateway_server() as gw, raw_client(gw) as client:
        async with asyncio.timeout(TIMEOUT):
            await client.call("chat.setModel", ["offline-fast"])
            text, deltas, final = await client.stream("chat.postChat", ["hi"])
            stream_id = final["result"]["streamId"]
            again, replayed, whole = await client.stream(
                "stream.resume", {"streamId": stream_id, "after": -1}
            )
            rest, none, last = await client.stream(
                "stream.resume", {"streamId": stream_id, "after": deltas[-1]["seq"]}
            )
    assert again == text and replayed[-1]["seq"] == deltas[-1]["seq"]
    assert whole["result"] == final["result"] == last["result"]
    assert rest == "" and none == []


async def test_another_users_stream_is_refused_exactly_like_an_unknown_one() -> None:
    """bob resuming or cancelling alice's stream gets the same error as for an unknown id."""
    async with gateway_server(done_ttl=1.0) as gw:
        async with asyncio.timeout(TIMEOUT):
            async with raw_client(gw) as alice:
                await alice.call("chat.setModel", ["offline-fast"])
                _, _, final = await alice.stream("chat.postChat", ["hi"])
            stream_id = final["result"]["streamId"]
            async with raw_client(gw, "tok-bob") as bob:
                theirs = await bob.call("stream.resume", {"streamId": stream_id, "after": -1})
                unknown = await bob.call("stream.resume", {"streamId": "st_nope", "after": -1})
                cancel = await bob.call("stream.cancel", {"streamId": stream_id})
                listed = await bob.call("stream.list")
            await asyncio.sleep(1.1)
            async with raw_client(gw) as alice:
                expired = await alice.call("stream.resume", {"streamId": stream_id, "after": -1})
                bad = await alice.call("stream.resume", {"streamId": stream_id, "after": -2})
    assert theirs["error"] == unknown["error"] == cancel["error"] == expired["error"]
    assert theirs["error"]["code"] == -32040 and "data" not in theirs["error"]
    assert listed["result"] == []
    assert bad["error"]["code"] == -32602


async def test_resuming_before_the_trimmed_part_is_a_gap_error() -> None:
    """With history trimmed past the position, resume answers -32041 with the first seq kept."""
    async with gateway_server(max_pieces=8, max_lag=4) as gw:
        register_module(gw.registry, Count())
        async with asyncio.timeout(TIMEOUT):
            stream_id, before, _ = await start_and_cut(gw, "count.up", {"n": 100}, 1)
            async with raw_client(gw) as client:
                while (await client.call("stream.list"))["result"][0]["state"] != "done":
                    await asyncio.sleep(0.01)
                gap = await client.call("stream.resume", {"streamId": stream_id, "after": 0})
                tail, deltas, final = await client.stream(
                    "stream.resume", {"streamId": stream_id, "after": 96}
                )
    assert before[0]["seq"] == 0
    assert gap["error"]["code"] == -32041
    first = gap["error"]["data"]["firstSeq"]
    assert 1 < first <= 96
    assert tail == piece(97, 1) + piece(98, 1) + piece(99, 1)
    assert [d["seq"] for d in deltas][-1] == 99
    assert final["result"]["finishReason"] == "stop"


async def test_a_disconnect_is_not_a_stop_the_upstream_finishes() -> None:
    """The client drops mid-answer; the provider's stream still runs to its end into the log."""
    reply = Reply(text=["tok "] * 30, interval=0.02)
    async with OpenAIFake(default=reply) as fake:
        async with provider_gateway(fake, models=(fake.model_config("up"),)) as gw:
            async with asyncio.timeout(TIMEOUT):
                stream_id, before, _ = await start_and_cut(gw, "chat.postChat", ["hi"], 1)
                record = await fake.finished(timeout=TIMEOUT)
                text, _, response = await resume(gw, stream_id, before[-1]["seq"])
    assert record.completed and not record.disconnected
    assert "".join(d["text"] for d in before) + text == "tok " * 30
    assert response["result"]["finishReason"] == "stop"


async def test_grace_expiry_cancels_the_upstream() -> None:
    """Nobody resumes within resume_grace: the provider sees the hang-up; the log says cancelled."""
    slow = Reply(text=["tok "] * 200, interval=0.05)
    async with OpenAIFake(default=slow) as fake:
        async with provider_gateway(
            fake, models=(fake.model_config("up"),), resume_grace=1.0
        ) as gw:
            async with asyncio.timeout(TIMEOUT):
                stream_id, before, _ = await start_and_cut(gw, "chat.postChat", ["hi"], 1)
                async with raw_client(gw) as client:
                    running = (await client.call("stream.list"))["result"]
                record = await fake.finished(timeout=TIMEOUT)
                text, deltas, response = await resume(gw, stream_id, -1)
                async with raw_client(gw) as client:
                    done = (await client.call("stream.list"))["result"]
    assert record.disconnected and not record.completed
    assert running[0]["streamId"] == stream_id and running[0]["state"] == "running"
    assert response["result"]["finishReason"] == "cancelled"
    assert text.startswith(before[0]["text"]) and len(text) < len("tok " * 200)
    assert done[0]["state"] == "done" and done[0]["finishReason"] == "cancelled"
    assert done[0]["lastSeq"] == (deltas[-1]["seq"] if deltas else -1)


async def test_stream_cancel_from_another_connection_stops_the_answer() -> None:
    """stream.cancel on a second connection of the same user ends the first's call at once."""
    async with gateway_server() as gw:
        async with asyncio.timeout(TIMEOUT):
            async with raw_client(gw) as first, raw_client(gw) as second:
                id = await first.request("chat.postChat", ["a long question"])
                delta = await first.recv()
                stream_id = delta["params"]["streamId"]
                cancelled = await second.call("stream.cancel", {"streamId": stream_id})
                response = await _response(first, id)
                again = await second.call("stream.cancel", {"streamId": stream_id})
    assert cancelled["result"] == {"cancelled": True}
    assert response["result"]["finishReason"] == "cancelled"
    assert response["result"]["streamId"] == stream_id
    assert again["result"] == {"cancelled": False}


async def test_rpc_cancel_of_a_resume_call_stops_the_stream() -> None:
    """rpc.cancel with the id of a stream.resume call stops the stream it follows."""
    async with gateway_server() as gw:
        async with asyncio.timeout(TIMEOUT):
            stream_id, before, _ = await start_and_cut(gw, "chat.postChat", ["hi there"], 1)
            async with raw_client(gw) as client:
                params = {"streamId": stream_id, "after": before[-1]["seq"]}
                id = await client.request("stream.resume", params)
                await client.recv()  # it is following (a cancel before it starts is -32005)
                await client.send({"jsonrpc": "2.0", "method": "rpc.cancel", "params": {"id": id}})
                response = await _response(client, id)
    assert response["result"]["finishReason"] == "cancelled"


async def test_usage_is_billed_once_however_often_a_stream_is_resumed() -> None:
    """Resuming replays the log: the session's usage counts the answer once."""
    async with gateway_server() as gw:
        async with asyncio.timeout(TIMEOUT):
            await set_model(gw, "offline-fast", "tok-bob")
            async with raw_client(gw, "tok-bob") as bob:
                _, _, final = await bob.stream("chat.postChat", ["hi"])
                stream_id = final["result"]["streamId"]
                for _ in range(3):
                    await bob.stream("stream.resume", {"streamId": stream_id, "after": -1})
                stats = (await bob.call("chat.getSessionStats"))["result"]
    usage = stats["you"]["usage"]
    assert usage["requests"] == 1
    assert usage["totalTokens"] == final["result"]["usage"]["totalTokens"]


async def _response(client: RawClient, id: Any) -> dict[str, Any]:
    while True:
        frame = await client.recv()
        if frame.get("id") == id and "method" not in frame:
            return frame


async def test_a_streaming_call_in_a_batch_is_logged_and_resumable() -> None:
    """A stream inside a batch carries its streamId; its final result in the array replays."""
    async with gateway_server() as gw, raw_client(gw) as client:
        async with asyncio.timeout(TIMEOUT):
            await client.call("chat.setModel", ["offline-fast"])
            await client.send(
                [
                    {"jsonrpc": "2.0", "id": "s", "method": "chat.postChat", "params": ["hi"]},
                    {"jsonrpc": "2.0", "id": "m", "method": "chat.getCurrentModel"},
                ]
            )
            deltas = []
            while True:
                frame = await client.recv()
                if isinstance(frame, list):
                    break
                deltas.append(frame["params"])
            final = next(item for item in frame if item["id"] == "s")
            text, _, replay = await client.stream(
                "stream.resume", {"streamId": deltas[0]["streamId"]}
            )
    assert text == "".join(d["text"] for d in deltas)
    assert replay["result"] == final["result"]


async def test_stream_methods_refuse_bad_params_without_disturbing_the_connection() -> None:
    """Wrong types and missing ids are -32602; the connection goes on."""
    async with gateway_server() as gw, raw_client(gw) as client:
        async with asyncio.timeout(TIMEOUT):
            answers = [
                await client.call("stream.resume", params)
                for params in (
                    {},
                    {"streamId": 5},
                    {"streamId": "st_x", "after": "1"},
                    {"streamId": "st_x", "after": 1.5},
                    ["st_x", -1, "extra"],
                )
            ]
            cancel = await client.call("stream.cancel", {"streamId": None})
            alive = await client.call("chat.getCurrentModel")
    assert [a["error"]["code"] for a in answers] == [-32602] * 5
    assert cancel["error"]["code"] == -32602
    assert alive["result"]["name"] == "offline"


async def test_reasoning_pieces_resume_as_reasoning() -> None:
    """A resumed chatWithReasoning replays reasoning deltas as "reasoning", text as "text"."""
    reply = Reply(reasoning=["Weighing ", "the ", "question"], text=["An", " answer", "."])
    async with OpenAIFake(default=reply) as fake:
        async with provider_gateway(fake, models=(fake.model_config("up"),)) as gw:
            async with asyncio.timeout(TIMEOUT):
                async with raw_client(gw) as client:
                    id = await client.request("chat.chatWithReasoning", {"message": "hi"})
                    whole = []
                    while (frame := await client.recv()).get("id") != id:
                        whole.append(frame["params"])
                stream_id = whole[0]["streamId"]
                _, replayed, _ = await resume(gw, stream_id, -1)
                _, rest, _ = await resume(gw, stream_id, whole[1]["seq"])

    def kinds(deltas: list[dict[str, Any]]) -> str:
        return "".join(
            "r" * len(d.get("reasoning", "")) + "t" * len(d.get("text", "")) for d in deltas
        )

    def joined(deltas: list[dict[str, Any]], key: str) -> str:
        return "".join(d.get(key, "") for d in deltas)

    assert kinds(replayed) == kinds(whole)
    assert joined(replayed, "reasoning") == "Weighing the question"
    assert joined(replayed, "text") == "An answer."
    assert kinds(whole[:2]) + kinds(rest) == kinds(whole)
