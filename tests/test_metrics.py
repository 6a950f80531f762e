"""GET /metrics after known traffic: every count exact, histograms observed, labels bounded.

Each test runs real ``gateway serve`` processes (fresh counters) and drives
them over real sockets; model traffic goes to the fake OpenAI server.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gateway import metrics
from gateway.config import DEFAULT_MODELS
from gateway.modules.base import Module, exposed, register_module
from tests.fakes import Reply
from tests.fakes.openai_server import OpenAIFake
from tests.gateway_process import (
    GatewayProcess,
    Metrics,
    gateway_process,
    http_get,
    models_toml,
    scrape,
)
from tests.redis_support import gateway_processes, redis_server, redis_url
from tests.support import RawClient, gateway_server

__all__ = ["redis_server", "redis_url"]  # fixtures in use

KEYS = "alice:tok-alice,bob:tok-bob,root:tok-root"
ENV = {"GATEWAY_API_KEYS": KEYS, "GATEWAY_ADMINS": "root"}
SERVER = """
[server]
send_timeout = 0.5
outbound_queue_bytes = 65536
"""
TIMEOUT = 20.0

LABELS = {
    "method", "outcome", "code", "reason", "model", "version", "python", "le",
    "gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model",
    "gen_ai_response_model", "gen_ai_token_type", "error_type",
}  # fmt: skip
"""Every label name the gateway may use: none names a user, connection or stream."""


class CountingClient(RawClient):
    """A RawClient that counts the frames and bytes it receives."""

    frames = 0
    bytes = 0

    async def recv(self, timeout: float = TIMEOUT) -> Any:
        async with asyncio.timeout(timeout):
            raw = await self.ws.recv()
        self.frames += 1
        self.bytes += len(raw.encode() if isinstance(raw, str) else raw)
        return json.loads(raw)


@asynccontextmanager
async def client(
    gp: GatewayProcess, token: str | None = None, **kwargs: Any
) -> AsyncIterator[CountingClient]:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with asyncio.timeout(TIMEOUT):
        ws = await connect(gp.ws_url, additional_headers=headers, **kwargs)
    try:
        yield CountingClient(ws)
    finally:
        await ws.close()


async def until(gp: GatewayProcess, check: Callable[[Metrics], bool]) -> Metrics:
    """Scrape until ``check`` holds (other processes flush once a second)."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            m = await scrape(f"{gp.http_url}/metrics")
            if check(m):
                return m
            await asyncio.sleep(0.1)


def usage_of(response: dict[str, Any]) -> tuple[int, int]:
    usage = response["result"]["usage"]
    return usage["promptTokens"], usage["completionTokens"]


def assert_bounded(m: Metrics, registered: set[str], forbidden: list[str]) -> None:
    for name, labels, _ in m.samples:
        if not name.startswith("gateway_"):
            continue
        assert set(labels) <= LABELS, (name, labels)
        if "method" in labels:
            assert labels["method"] in registered | {"unknown"}, labels
        for value in labels.values():
            assert not any(f in value for f in forbidden), (name, labels)


async def test_metrics_count_known_traffic_exactly(tmp_path: Path) -> None:
    """N calls, M streams, K errors, a cancel, a failover and a slow consumer, counted exactly."""
    big = Reply(text=["x" * 16384] * 800)
    async with OpenAIFake() as fake:
        fake.script(Reply(status=503), big)
        models = (
            *DEFAULT_MODELS,
            fake.model_config("gpt", fallbacks=("offline-fast",)),
            fake.model_config("big"),
        )
        # resume_grace 0: the slow consumer's stream is aborted with its socket (counted
        # "aborted"), not left running for a resume (tests/test_resume.py covers that).
        config = models_toml(models, "offline-fast") + SERVER + "\n[streams]\nresume_grace = 0.0\n"
        async with gateway_process(tmp_path, config=config, env={**ENV, **fake.env}) as gp:
            metrics_url = f"{gp.http_url}/metrics"
            tokens = {"input": 0, "output": 0}
            async with client(gp, "tok-alice") as alice:
                # N = 5 calls
                for _ in range(5):
                    assert "result" in await alice.call("chat.listModels")
                before = await scrape(metrics_url)
                assert before.get("gateway_connections") == 1
                assert before.get("gateway_users") == 1
                frames0, bytes0 = alice.frames, alice.bytes
                # M = 3 streams
                for i in range(3):
                    _, deltas, final = await alice.stream(
                        "chat.postChat", {"message": f"count me {i}"}, id=f"req-{i}-7f3a"
                    )
                    assert deltas and final["result"]["finishReason"] == "stop"
                    p, c = usage_of(final)
                    tokens["input"] += p
                    tokens["output"] += c
                after = await scrape(metrics_url)
                # Only alice was served in between: what she received is what was sent.
                assert (
                    after.get("gateway_frames_sent_total") - before.get("gateway_frames_sent_total")
                    == alice.frames - frames0
                )
                assert (
                    after.get("gateway_sent_bytes_total") - before.get("gateway_sent_bytes_total")
                    == alice.bytes - bytes0
                )
                # K errors: 2 unknown methods, 1 bad param, 1 parse error, 1 forbidden
                for _ in range(2):
                    assert (await alice.call("no.such"))["error"]["code"] == -32601
                assert (await alice.call("chat.setModel", ["nope"]))["error"]["code"] == -32602
                await alice.send("this is not json")
                assert (await alice.recv())["error"]["code"] == -32700
                assert (await alice.call("admin.status"))["error"]["code"] == -32003
                # A stream running now, then cancelled
                await alice.call("chat.setModel", ["offline"])
                await alice.request(
                    "chat.postChat", {"message": "a slow answer " * 20}, id="stream-9b1e"
                )
                assert (await alice.recv())["method"] == "stream.delta"
                running = await scrape(metrics_url)
                assert running.get("gateway_streams", model="offline") == 1
                await alice.send(
                    {"jsonrpc": "2.0", "method": "rpc.cancel", "params": {"id": "stream-9b1e"}}
                )
                while "id" not in (frame := await alice.recv()):
                    pass
                assert frame["result"]["finishReason"] == "cancelled"
                # A failover: gpt answers 503 before its first token, offline-fast answers
                await alice.call("chat.setModel", ["gpt"])
                _, _, final = await alice.stream("chat.postChat", {"message": "fail over"})
                assert final["result"]["model"] == "offline-fast"
                failover_tokens = usage_of(final)

                # An unauthenticated socket fails auth.login (4500); a bad header is refused
                async with client(gp) as anon:
                    response = await anon.call("auth.login", ["wrong-token"])
                    assert response["error"]["code"] == -32001
                    with pytest.raises(ConnectionClosed):
                        await anon.recv()
                    assert anon.ws.close_code == 4500
                with pytest.raises(Exception, match="401"):
                    async with client(gp, "tok-forged"):
                        pass

                # A slow consumer: bob stops reading during a 13 MB answer
                async with client(gp, "tok-bob", max_queue=1) as bob:
                    assert "result" in await bob.call("chat.setModel", ["big"])
                    await bob.request("chat.postChat", {"message": "flood me"})
                    await until(gp, lambda m: m.get("gateway_slow_consumer_closes_total") == 1)
                    with pytest.raises(ConnectionClosed) as closed:
                        async with asyncio.timeout(TIMEOUT):
                            while True:
                                await bob.ws.recv()
                    # 4000, or dropped when the close frame itself could not be written in time
                    rcvd = closed.value.rcvd
                    assert rcvd is None or rcvd.code == 4000

                async with client(gp, "tok-root") as root:
                    status = (await root.call("admin.status"))["result"]
                    both = await scrape(metrics_url)
                    assert both.get("gateway_connections") == 2
                    assert both.get("gateway_users") == 2
                    assert status["connections"] == 2 and status["users"] == 2
                    assert status["workers"] == 1
                    assert status["models"]["big"]["operations"] == 1
                    assert status["slowConsumerCloses"] == 1
                doc = (await alice.call("rpc.discover"))["result"]
                registered = {method["name"] for method in doc["methods"]}

            m = await until(gp, lambda m: m.get("gateway_connections") == 0)
    g = m.get
    # Connections
    assert g("gateway_connections_accepted_total") == 4
    assert g("gateway_connections_rejected_total", reason="unauthenticated") == 1
    assert g("gateway_connections_rejected_total") == 1
    assert g("gateway_users") == 0
    assert {ls["code"]: v for ls, v in _values(m, "gateway_close_codes_sent_total")} == {
        "4500": 1,
        "4000": 1,
    }
    assert g("gateway_slow_consumer_closes_total") == 1
    # Calls by method and outcome
    calls = {(ls["method"], ls["outcome"]): v for ls, v in _values(m, "gateway_calls_total")}
    assert {k: v for k, v in calls.items() if v} == {
        ("chat.listModels", "ok"): 5,
        ("chat.postChat", "ok"): 4,
        ("chat.postChat", "cancelled"): 1,
        ("chat.postChat", "aborted"): 1,
        ("chat.setModel", "ok"): 3,
        ("chat.setModel", "error"): 1,
        ("unknown", "error"): 2,
        ("admin.status", "error"): 1,
        ("admin.status", "ok"): 1,
        ("auth.login", "error"): 1,
        ("rpc.discover", "ok"): 1,
    }
    for method in ("chat.listModels", "chat.postChat", "chat.setModel", "admin.status"):
        executed = sum(v for (meth, _), v in calls.items() if meth == method)
        assert g("gateway_call_duration_seconds_count", method=method) == executed
        assert g("gateway_call_duration_seconds_sum", method=method) > 0
    errors = {ls["code"]: v for ls, v in _values(m, "gateway_errors_total")}
    assert errors == {"-32601": 2, "-32602": 1, "-32700": 1, "-32003": 1, "-32001": 1}
    # Streams
    assert g("gateway_streams") == 0
    assert g("gateway_streams_detached") == 0
    assert g("gateway_deltas_merged_total") > 0  # the slow consumer's queue merged
    # Models
    fast = {"gen_ai_request_model": "offline-fast", "gen_ai_response_model": "offline-fast"}
    usage = "gateway_gen_ai_client_token_usage"
    assert m[f"{usage}_count", {**fast, "gen_ai_token_type": "input"}] == 3
    assert m[f"{usage}_sum", {**fast, "gen_ai_token_type": "input"}] == tokens["input"]
    assert m[f"{usage}_sum", {**fast, "gen_ai_token_type": "output"}] == tokens["output"]
    failed_over = {"gen_ai_request_model": "gpt", "gen_ai_response_model": "offline-fast"}
    assert m[f"{usage}_sum", {**failed_over, "gen_ai_token_type": "input"}] == failover_tokens[0]
    assert m[f"{usage}_sum", {**failed_over, "gen_ai_token_type": "output"}] == failover_tokens[1]
    assert m[f"{usage}_count", {"gen_ai_token_type": "input"}] == 6  # 3 + cancel + failover + big
    ops = "gateway_gen_ai_client_operation_duration_seconds_count"
    assert g(ops) == 6
    assert g(ops, gen_ai_request_model="offline", error_type="") == 1
    ttfc = "gateway_gen_ai_client_operation_time_to_first_chunk_seconds_count"
    assert g(ttfc) == 6
    per_chunk = "gateway_gen_ai_client_operation_time_per_output_chunk_seconds_count"
    # One observation per operation with two chunks or more (the cancelled one may have one).
    assert g(per_chunk) - g(per_chunk, gen_ai_request_model="offline") == 5
    assert g("gateway_gen_ai_client_operation_time_per_output_chunk_seconds_sum") > 0
    failover = {"gen_ai_provider_name": "openai", "gen_ai_request_model": "gpt"}
    assert m["gateway_gen_ai_failovers_total", {**failover, "error_type": "unavailable"}] == 1
    assert g("gateway_gen_ai_failovers_total") == 1
    assert m["gateway_gen_ai_upstream_errors_total", failover] == 1
    assert g("gateway_gen_ai_upstream_errors_total") == 1
    assert g("gateway_build_info") == 1
    assert g("gateway_workers") == 1
    assert_bounded(m, registered, ["alice", "bob", "root", "7f3a", "stream-9b1e", "tok-"])


def _values(m: Metrics, name: str) -> list[tuple[dict[str, str], float]]:
    return [(ls, v) for n, ls, v in m.samples if n == name and v]


async def admin_status(gp: GatewayProcess, *args: str) -> tuple[int, str, str]:
    """``gateway admin status ARGS`` as a subprocess against ``gp``, as root."""
    env = {**os.environ, "GATEWAY_URL": gp.ws_url, "GATEWAY_TOKEN": "tok-root"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "admin", "status", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(TIMEOUT):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_two_processes_sharing_a_multiprocess_dir_add_up_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scraping either of two gateways counts both; a dead worker's live gauges drop out."""
    shared = tmp_path / "prometheus"
    shared.mkdir()
    env = {**ENV, "PROMETHEUS_MULTIPROC_DIR": str(shared)}
    config = models_toml(DEFAULT_MODELS, "offline-fast")
    async with (
        gateway_process(tmp_path, config=config, env=env, name="a") as a,
        gateway_process(tmp_path, config=config, env=env, name="b") as b,
        AsyncExitStack() as stack,
    ):
        on_a = await stack.enter_async_context(client(a, "tok-alice"))
        on_b = await stack.enter_async_context(client(b, "tok-bob"))
        root_b = await stack.enter_async_context(client(b, "tok-root"))
        for _ in range(3):
            assert "result" in await on_a.call("chat.listModels")
        for _ in range(4):
            assert "result" in await on_b.call("chat.listModels")
        await on_a.stream("chat.postChat", {"message": "one"})
        for i in range(2):
            await on_b.stream("chat.postChat", {"message": f"two {i}"})
        assert (await root_b.call("no.such"))["error"]["code"] == -32601
        sent = on_a.frames + on_b.frames + root_b.frames
        size = on_a.bytes + on_b.bytes + root_b.bytes

        # B tallies frames once a second: wait for it, then every figure is exact.
        for gp in (a, b):
            m = await until(gp, lambda m: m.get("gateway_frames_sent_total") == sent)
            assert m.get("gateway_sent_bytes_total") == size
            assert m.get("gateway_calls_total", method="chat.listModels", outcome="ok") == 7
            assert m.get("gateway_calls_total", method="chat.postChat", outcome="ok") == 3
            assert m.get("gateway_calls_total", method="unknown", outcome="error") == 1
            assert m.get("gateway_call_duration_seconds_count", method="chat.postChat") == 3
            assert m.get("gateway_errors_total", code=-32601) == 1
            assert m.get("gateway_connections") == 3
            assert m.get("gateway_connections_accepted_total") == 3
            assert m.get("gateway_users") == 3
            assert m.get("gateway_workers") == 2
            assert m.get("gateway_gen_ai_client_token_usage_count", gen_ai_token_type="input") == 3

        # The admin view reads the same aggregate (its own connection included).
        code, out, err = await admin_status(a, "--json")
        assert code == 0, err
        status = json.loads(out)
        assert status["workers"] == 2
        assert status["connections"] == 4 and status["users"] == 4
        assert status["calls"] == 7 + 3 + 1 + 1  # and the CLI client's own auth call
        assert status["errors"] == {"-32601": 1}
        assert status["models"]["offline-fast"]["operations"] == 3
        code, out, err = await admin_status(b)
        assert code == 0, err
        assert "2 worker(s)" in out and "offline-fast" in out

        # B dies with two sockets open: until the supervisor says so, its gauges still count.
        await b.stop(signal.SIGKILL)
        m = await scrape(f"{a.http_url}/metrics")
        assert m.get("gateway_connections") == 3
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(shared))
        metrics.worker_died(b.pid)
        m = await scrape(f"{a.http_url}/metrics")
        assert m.get("gateway_connections") == 1
        assert m.get("gateway_users") == 1
        assert m.get("gateway_workers") == 1
        # Counters keep what the dead worker counted.
        assert m.get("gateway_calls_total", method="chat.listModels", outcome="ok") == 7


async def test_a_non_admin_gets_forbidden_from_admin_status(tmp_path: Path) -> None:
    """admin.status is -32003 for a user without the admin role; the CLI exits 1."""
    config = models_toml(DEFAULT_MODELS, "offline-fast")
    async with gateway_process(tmp_path, config=config, env=ENV) as gp:
        async with client(gp, "tok-alice") as alice:
            response = await alice.call("admin.status")
            assert response["error"]["code"] == -32003
        env = {**os.environ, "GATEWAY_URL": gp.ws_url, "GATEWAY_TOKEN": "tok-alice"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "admin", "status", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(TIMEOUT):
            out, err = await proc.communicate()
        assert proc.returncode == 1
        assert b"-32003" in err and not out


async def test_a_separate_metrics_port_serves_metrics_only_there(tmp_path: Path) -> None:
    """With metrics_port set, /metrics moves there; the main port answers 404 for it."""
    config = models_toml(DEFAULT_MODELS, "offline-fast") + "[server]\nmetrics_port = 0\n"
    async with gateway_process(tmp_path, config=config, env=ENV) as gp:
        assert gp.proc.stdout is not None
        async with asyncio.timeout(TIMEOUT):
            line = (await gp.proc.stdout.readline()).decode().strip()
        metrics_url = line.removeprefix("Metrics on ")
        assert not metrics_url.startswith(gp.http_url)
        async with client(gp, "tok-alice") as alice:
            await alice.call("chat.listModels")
        m = await scrape(metrics_url)
        assert m.get("gateway_calls_total", method="chat.listModels", outcome="ok") == 1
        assert (await http_get(f"{gp.http_url}/metrics"))[0] == 404
        assert (await http_get(metrics_url.replace("/metrics", "/healthz")))[0] == 404
        assert (await http_get(f"{gp.http_url}/healthz"))[0] == 200


class Firehose(Module):
    namespace = "test"

    @exposed("firehose")
    async def firehose(self, size: int) -> AsyncIterator[str]:
        """Deltas of ``size`` characters as fast as the queue takes them."""
        while True:
            yield "x" * size


async def test_deltas_merged_counts_every_merge_of_a_lagging_reader() -> None:
    """gateway_deltas_merged_total grows by exactly the merges the connection's queue made."""
    async with gateway_server() as gw:
        register_module(gw.registry, Firehose())
        before = _sample("gateway_deltas_merged_total")
        headers = {"Authorization": "Bearer tok-alice"}
        async with asyncio.timeout(TIMEOUT):
            async with connect(gw.ws_url, additional_headers=headers, max_queue=1) as ws:
                await ws.send('{"jsonrpc":"2.0","id":1,"method":"test.firehose","params":[8192]}')
                conn = next(iter(gw.connections))
                while conn.outbound.merged < 50:  # lag until the socket buffers are full
                    await asyncio.sleep(0.02)
                await ws.send('{"jsonrpc":"2.0","method":"rpc.cancel","params":{"id":1}}')
                while "result" not in json.loads(await ws.recv()):
                    pass
                merged = conn.outbound.merged
    assert _sample("gateway_deltas_merged_total") - before == merged


def _sample(name: str) -> float:
    return sum(v for n, _, v in metrics.samples() if n == name)


async def test_workers_2_metrics_count_both_workers_exactly(redis_url: str, tmp_path: Path) -> None:
    """``serve --workers 2``: any scrape reports the sum over both workers, Redis up."""
    env = {"GATEWAY_REDIS_URL": redis_url}
    async with gateway_processes(tmp_path, 1, config="", workers=2, env=env) as procs:
        sup = procs[0]
        nodes: set[str] = set()
        sent = size = calls = 0
        users = ("bob", "carol", "dave", "erin", "frank")
        async with AsyncExitStack() as stack:
            open_clients = []
            # Connect until both workers hold connections (the kernel picks the worker).
            for attempt in range(40):
                user = users[attempt % len(users)]
                headers = {"Authorization": f"Bearer tok-{user}"}
                async with asyncio.timeout(TIMEOUT):
                    ws = await stack.enter_async_context(
                        connect(sup.ws_url, additional_headers=headers)
                    )
                nodes.add(ws.response.headers["X-Gateway-Node"])
                c = CountingClient(ws)
                open_clients.append(c)
                if len(nodes) == 2 and len(open_clients) >= 4:
                    break
            assert len(nodes) == 2
            for c in open_clients:
                for _ in range(3):
                    assert "result" in await c.call("chat.listModels")
                    calls += 1
            for c in open_clients:
                sent, size = sent + c.frames, size + c.bytes
            m = await until(sup, lambda m: m.get("gateway_frames_sent_total") == sent)
            assert m.get("gateway_sent_bytes_total") == size
            assert m.get("gateway_calls_total", method="chat.listModels", outcome="ok") == calls
            assert m.get("gateway_connections") == len(open_clients)
            assert m.get("gateway_connections_accepted_total") == len(open_clients)
            assert m.get("gateway_workers") == 2
            assert m.get("gateway_redis_up") == 1
            assert m.get("gateway_redis_errors_total") == 0
        m = await until(sup, lambda m: m.get("gateway_connections") == 0)
        assert m.get("gateway_calls_total", method="chat.listModels", outcome="ok") == calls


def test_tallied_call_durations_export_as_observed() -> None:
    """Calls are tallied and added at flush: the histogram reads exactly as observe() would."""
    from prometheus_client import CollectorRegistry, Histogram

    durations = [0.0001, 0.0005, 0.0006, 0.001, 0.07, 0.7, 2.5, 100.0, 500.0]
    observer = metrics.CallMetrics(lambda name: True)
    for seconds in durations:
        observer.call_ended("test.tally", "ok", seconds)
    reference = Histogram(
        "ref", "reference", buckets=metrics._CALL_BUCKETS, registry=CollectorRegistry()
    )
    for seconds in durations:
        reference.observe(seconds)
    expected = {
        (s.name.removeprefix("ref"), s.labels.get("le")): s.value
        for family in reference.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }
    got = {
        (name.removeprefix("gateway_call_duration_seconds"), labels.get("le")): value
        for name, labels, value in metrics.samples()
        if name.startswith("gateway_call_duration_seconds")
        and labels.get("method") == "test.tally"
        and not name.endswith("_created")
    }
    assert got == expected
    assert _sample_where("gateway_calls_total", method="test.tally", outcome="ok") == len(durations)
    # A second flush adds nothing more.
    metrics.flush()
    assert _sample_where("gateway_calls_total", method="test.tally", outcome="ok") == len(durations)


def _sample_where(name: str, **labels: str) -> float:
    return sum(
        v
        for n, ls, v in metrics.samples()
        if n == name and all(ls.get(k) == x for k, x in labels.items())
    )
