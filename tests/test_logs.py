"""Log lines: JSON with the call's context, one line per connection event, and no secrets.

A real gateway process runs with tokens, a signing secret and an upstream
key set to recognisable values; traffic includes logins that fail, chats and
a failover to the fake OpenAI server. No secret and no message text may
appear in any log line, on stdout, or in /metrics.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway import logs
from gateway.auth.tokens import mint_token
from gateway.config import DEFAULT_MODELS
from gateway.context import CallInfo, User, call_var, connection_id_var, user_var
from gateway.server.redact import register_secrets
from tests.fakes import Reply
from tests.fakes.openai_server import OpenAIFake
from tests.gateway_process import gateway_process, http_get, models_toml
from tests.support import RawClient

TIMEOUT = 20.0
ALICE_KEY = "key-ALICE-7c1d9e-secret"
ROOT_KEY = "key-ROOT-41b0aa-secret"
JWT_SECRET = "jwt-SIGNING-3e8f77-secret-0123456789abcdef"
UPSTREAM_KEY = "sk-UPSTREAM-5d2c19-secret"
WRONG_TOKEN = "wrong-TOKEN-9a9a9a-secret"
MESSAGE = "MESSAGE-TEXT-purple-elephant"
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def _client(url: str, token: str | None = None) -> RawClient:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with asyncio.timeout(TIMEOUT):
        return RawClient(await connect(url, additional_headers=headers))


async def test_json_logs_carry_context_and_no_secret_reaches_logs_or_metrics(
    tmp_path: Path,
) -> None:
    """Logins (some failing), chats and a failover: JSON lines with context, no secret anywhere."""
    carol_token = mint_token(JWT_SECRET, "carol", ttl=3600)
    async with OpenAIFake(api_key=UPSTREAM_KEY) as fake:
        fake.script(Reply(status=503))
        models = (*DEFAULT_MODELS, fake.model_config("gpt", fallbacks=("offline-fast",)))
        env = {
            "GATEWAY_API_KEYS": f"alice:{ALICE_KEY},root:{ROOT_KEY}",
            "GATEWAY_ADMINS": "root",
            "GATEWAY_JWT_SECRET": JWT_SECRET,
            **fake.env,
        }
        config = models_toml(models, "offline-fast")
        # No --log-format: stderr is a file, so the default is JSON.
        async with gateway_process(tmp_path, config=config, env=env) as gp:
            alice = await _client(gp.ws_url, ALICE_KEY)
            await alice.call("chat.listModels")
            _, _, final = await alice.stream("chat.postChat", {"message": MESSAGE})
            assert final["result"]["finishReason"] == "stop"
            history = [{"role": "user", "content": MESSAGE}, {"role": "assistant", "content": "ok"}]
            await alice.stream("chat.chatWithHistory", {"message": MESSAGE, "history": history})
            await alice.call("chat.setModel", ["gpt"])
            _, _, final = await alice.stream(
                "chat.postChat", {"message": MESSAGE}, id="failover-req"
            )
            assert final["result"]["model"] == "offline-fast"
            # carol logs in by frame with a signed token
            carol = await _client(gp.ws_url)
            assert "result" in await carol.call("auth.login", [carol_token])
            await carol.call("chat.postChat", {"message": MESSAGE})
            # a wrong token at the handshake, and by frame
            with pytest.raises(InvalidStatus):
                await _client(gp.ws_url, WRONG_TOKEN)
            intruder = await _client(gp.ws_url)
            assert (await intruder.call("auth.login", [WRONG_TOKEN]))["error"]["code"] == -32001
            with pytest.raises(ConnectionClosed):
                await intruder.recv()
            root = await _client(gp.ws_url, ROOT_KEY)
            assert "result" in await root.call("admin.status")
            _, scraped = await http_get(f"{gp.http_url}/metrics")
            for ws in (alice, carol, root):
                await ws.ws.close()
            assert await gp.stop() == 0
            lines = gp.log_lines()
            stdout = "\n".join(gp.stdout)

    # No secret, token or message text anywhere.
    everything = "\n".join(lines) + stdout + scraped.decode()
    secrets = (ALICE_KEY, ROOT_KEY, JWT_SECRET, UPSTREAM_KEY, WRONG_TOKEN, carol_token, MESSAGE)
    for secret in secrets:
        assert secret not in everything, secret
    # Every line is a JSON object with the base fields.
    records = [json.loads(line) for line in lines]
    assert records
    for record in records:
        assert RFC3339_UTC.match(record["time"]), record
        assert record["level"] in ("debug", "info", "warning", "error", "critical")
        assert record["event"] and record["logger"] and record["node"]
    by_event: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_event.setdefault(record["event"], []).append(record)
    # One line per connect and disconnect (alice, carol, intruder, root), with the close code
    assert len(by_event["connect"]) == 4
    assert all(r["connection_id"] for r in by_event["connect"])
    disconnects = by_event["disconnect"]
    assert len(disconnects) == 4
    connected = {r["connection_id"] for r in by_event["connect"]}
    assert {r["connection_id"] for r in disconnects} == connected
    assert {(r["user_id"], r["code"], r["by"]) for r in disconnects} == {
        ("alice", 1000, "client"),
        ("carol", 1000, "client"),
        ("root", 1000, "client"),
        (None, 4500, "server"),
    }
    # auth failures: one at the handshake, one by frame
    assert sorted(r["where"] for r in by_event["auth_failed"]) == ["handshake", "login"]
    login_failure = next(r for r in by_event["auth_failed"] if r["where"] == "login")
    assert login_failure["method"] == "auth.login" and login_failure["connection_id"]
    # the failover, in the context of the call that failed over
    (failover,) = by_event["failover"]
    assert failover["from_model"] == "gpt" and failover["to_model"] == "offline-fast"
    assert failover["error_type"] == "unavailable"
    assert failover["user_id"] == "alice"
    assert failover["method"] == "chat.postChat"
    assert failover["rpc_id"] == failover["stream_id"] == "failover-req"
    alice_conn = next(r["connection_id"] for r in disconnects if r["user_id"] == "alice")
    assert failover["connection_id"] == alice_conn
    # shutting down, phase by phase
    phases = [r["phase"] for r in by_event["drain"]]
    assert phases == ["stop_accepting", "draining", "closing", "done"]


def _record(msg: str, *args: Any, **extra: Any) -> logging.LogRecord:
    record = logging.getLogger("t").makeRecord("t", logging.INFO, "f", 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_formatters_take_context_from_context_vars_and_scrub_credentials() -> None:
    """Both formats carry the call context; bearer tokens, JWTs and registered keys are cut."""
    register_secrets(["registered-SECRET-value"])
    tokens = [
        connection_id_var.set("c-1"),
        user_var.set(User("dana")),
        call_var.set(CallInfo(7, "chat.postChat", True)),
    ]
    try:
        record = _record("saw %s and Bearer abc.def", "registered-SECRET-value", event="x", n=1)
        line = json.loads(logs.JsonFormatter().format(record))
        text = logs.TextFormatter().format(record)
    finally:
        call_var.reset(tokens[2])
        user_var.reset(tokens[1])
        connection_id_var.reset(tokens[0])
    assert line["event"] == "x" and line["n"] == 1
    assert line["connection_id"] == "c-1" and line["user_id"] == "dana"
    assert line["rpc_id"] == 7 and line["stream_id"] == 7 and line["method"] == "chat.postChat"
    assert line["message"] == "saw [redacted] and [redacted]"
    assert "registered-SECRET-value" not in text and "abc.def" not in text
    assert "user_id=dana" in text and "method=chat.postChat" in text


def test_setup_picks_json_unless_the_stream_is_a_terminal() -> None:
    """``--log-format`` unset: JSON for a pipe or file, text for a terminal."""

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        assert logs.setup(stream=io.StringIO()) == "json"
        assert logs.setup(stream=Tty()) == "text"
        assert logs.setup("json", stream=Tty()) == "json"
        with pytest.raises(ValueError):
            logs.setup("xml", stream=io.StringIO())
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
