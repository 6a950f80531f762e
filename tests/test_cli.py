"""``gateway call`` and ``gateway chat`` as subprocesses against a real in-process gateway."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from gateway.client import connect
from tests.support import gateway_server

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 30.0
KEYS = {"tok-alice": "alice", "tok-bob": "bob"}


def cli_env(url: str | None, token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_URL", "GATEWAY_TOKEN")}
    if url is not None:
        env["GATEWAY_URL"] = url
    if token is not None:
        env["GATEWAY_TOKEN"] = token
    return env


@contextlib.asynccontextmanager
async def cli(
    *args: str, url: str | None, token: str | None = "tok-alice"
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python -m gateway ARGS`` with pipes, killed if a test leaves it running."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args,
        cwd=REPO, env=cli_env(url, token),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # Ctrl-C as a terminal sends it: a suite run in the background (SIGINT ignored,
        # inherited by children) must not make the CLI deaf to it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def run(
    *args: str, url: str | None, token: str | None = "tok-alice", stdin: str = ""
) -> tuple[int, str, str]:
    """Run the CLI to the end: (exit code, stdout, stderr)."""
    async with cli(*args, url=url, token=token) as proc:
        async with asyncio.timeout(TIMEOUT):
            out, err = await proc.communicate(stdin.encode())
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_call_prints_the_result_as_json_and_exits_0() -> None:
    """`gateway call chat.listModels` prints the models as JSON on stdout."""
    async with gateway_server(api_keys=KEYS) as gw:
        code, out, err = await run("call", "chat.listModels", url=gw.ws_url)
    assert code == 0, err
    assert [m["name"] for m in json.loads(out)][:2] == ["offline", "offline-fast"]


async def test_call_takes_positional_and_named_params() -> None:
    """JSON_PARAMS is an array (by position) or an object (by name)."""
    async with gateway_server(api_keys=KEYS) as gw:
        code, out, _ = await run("call", "chat.setModel", '["offline-fast"]', url=gw.ws_url)
        assert (code, json.loads(out)) == (0, True)
        code, out, _ = await run("call", "chat.getCurrentModel", url=gw.ws_url)
        assert json.loads(out)["name"] == "offline-fast"
        code, out, _ = await run("call", "chat.setModel", '{"modelName": "offline"}', url=gw.ws_url)
        assert (code, json.loads(out)) == (0, True)


async def test_call_flags_override_the_environment() -> None:
    """--url and --token win over GATEWAY_URL and GATEWAY_TOKEN."""
    async with gateway_server(api_keys=KEYS) as gw:
        code, out, err = await run(
            "call", "auth.whoami", "--url", gw.ws_url, "--token", "tok-bob",
            url="ws://127.0.0.1:9/nowhere", token="tok-alice",
        )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["user"]["id"] == "bob"


async def test_call_error_goes_to_stderr_with_its_code_and_exit_1() -> None:
    """An error response prints `error CODE: message` on stderr and exits 1."""
    async with gateway_server(api_keys=KEYS) as gw:
        code, out, err = await run("call", "chat.setModel", '["no-such-model"]', url=gw.ws_url)
        assert (code, out) == (1, "")
        assert "error -32602:" in err
        code, out, err = await run("call", "chat.noSuchMethod", url=gw.ws_url)
        assert (code, out) == (1, "")
        assert "error -32601:" in err


async def test_call_with_a_refused_token_or_no_server_exits_1() -> None:
    """A bad token (HTTP 401) or an unreachable server is an error, exit 1."""
    async with gateway_server(api_keys=KEYS) as gw:
        code, out, err = await run("call", "auth.whoami", url=gw.ws_url, token="tok-mallory")
    assert (code, out) == (1, "")
    assert "401" in err
    code, out, err = await run("call", "auth.whoami", "--timeout", "5", url="ws://127.0.0.1:9/ws")
    assert (code, out) == (1, "")
    assert "cannot connect" in err


async def test_call_with_params_that_are_not_a_json_object_or_array_exits_2() -> None:
    """Params must be a JSON object or array; anything else is a usage error."""
    code, _, err = await run("call", "chat.setModel", "offline", url="ws://127.0.0.1:9/ws")
    assert code == 2 and "JSON" in err
    code, _, err = await run("call", "chat.setModel", "42", url="ws://127.0.0.1:9/ws")
    assert code == 2 and "object or array" in err


async def test_call_on_a_streaming_method_prints_text_then_the_result_on_stderr() -> None:
    """A streaming method's text goes to stdout with a newline; finishReason and usage to stderr."""
    async with gateway_server(api_keys=KEYS) as gw:
        async with connect(gw.ws_url, token="tok-alice") as client:
            async with asyncio.timeout(TIMEOUT):
                await client.call("chat.setModel", "offline-fast")
                expected = await client.call("chat.chatNonStreaming", "hi there")
        code, out, err = await run(
            "call", "chat.postChat", '{"message": "hi there"}', url=gw.ws_url
        )
    assert code == 0, err
    assert out == expected["text"] + "\n"
    final = json.loads(err)
    assert final["finishReason"] == "stop" and final["model"] == "offline-fast"
    assert final["usage"]["totalTokens"] > 0


async def test_chat_through_piped_stdin_runs_commands_and_streams_replies() -> None:
    """Piped lines drive /models, /model, a message and /stats, then end of input exits 0."""
    script = "/models\n/model offline-fast\nhello gateway\n/stats\n"
    async with gateway_server(api_keys=KEYS) as gw:
        code, out, err = await run("chat", url=gw.ws_url, stdin=script)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("* offline ")
    assert lines[1].startswith("  offline-fast ")
    assert "model: offline-fast" in lines
    reply = next(line for line in lines if 'You said: "hello gateway"' in line)
    assert "I am offline-fast" in reply
    stats = json.loads(out[out.index("{") :])
    assert stats["you"]["userId"] == "alice"
    assert stats["you"]["currentModel"] == "offline-fast"


async def test_chat_sends_the_history_and_new_clears_it() -> None:
    """Each message carries the earlier turns; /new starts over."""
    script = "/model offline-fast\nfirst\nsecond\n/new\nthird\n/quit\nnever sent\n"
    async with gateway_server(api_keys=KEYS) as gw:
        code, out, err = await run("chat", url=gw.ws_url, stdin=script)
    assert code == 0, err
    replies = [line for line in out.splitlines() if "You said" in line]
    assert len(replies) == 3
    # The offline model counts the messages it was given (a system prompt included).
    counts = [int(m[1]) for r in replies if (m := re.search(r"has (\d+) messages", r))]
    assert counts[1] == counts[0] + 2  # + "first" and its answer
    assert counts[2] == counts[0]
    assert "never sent" not in out


async def test_chat_reports_errors_and_goes_on() -> None:
    """An error answer is printed on stderr with its code; the chat continues."""
    script = "/model no-such-model\n/bogus\n/model\n"
    async with gateway_server(api_keys=KEYS) as gw:
        code, out, err = await run("chat", url=gw.ws_url, stdin=script)
    assert code == 0
    assert "error -32602:" in err
    assert "unknown command /bogus" in err
    assert out.startswith("  offline ")


async def test_ctrl_c_during_a_reply_stops_the_reply_not_the_chat() -> None:
    """SIGINT while a reply streams cancels that reply; the next command still runs."""
    async with gateway_server(api_keys=KEYS) as gw:
        async with cli("chat", url=gw.ws_url) as proc:
            assert proc.stdin is not None and proc.stdout is not None
            # The paced offline model (30 words/s) takes about 10 s for this reply: it is
            # still streaming when the signal lands, however late a loaded machine runs us.
            proc.stdin.write(("tell me " + " ".join(["more"] * 300) + "\n").encode())
            await proc.stdin.drain()
            async with asyncio.timeout(TIMEOUT):
                start = await proc.stdout.read(5)
                proc.send_signal(signal.SIGINT)
                await asyncio.sleep(0.3)
                out, err = await proc.communicate(b"/model\n")
    assert proc.returncode == 0, err
    assert "[stopped]" in err.decode(), (start + out).decode()
    text = (start + out).decode()
    reply, _, rest = text.partition("\n")
    assert "more " * 30 not in reply  # it stopped long before the quote ends
    assert rest.startswith("* offline ") or rest.startswith("  offline ")


async def test_chat_with_a_refused_token_exits_1() -> None:
    """A refused token ends `gateway chat` at once with exit 1."""
    async with gateway_server(api_keys=KEYS) as gw:
        code, _, err = await run("chat", url=gw.ws_url, token="tok-mallory", stdin="hi\n")
    assert code == 1
    assert "401" in err


async def test_chat_continues_a_reply_through_a_dropped_connection() -> None:
    """The socket dies mid-reply (no close frame): chat reconnects, resumes, prints it whole."""
    message = "please keep going through a network change"
    async with gateway_server(api_keys=KEYS) as gw:
        async with connect(gw.ws_url, token="tok-alice") as client:
            expected = "".join(
                [t async for t in client.stream("chat.chatWithHistory", message, [])]
            )
        async with cli("chat", url=gw.ws_url) as proc:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write((message + "\n").encode())
            await proc.stdin.drain()
            async with asyncio.timeout(TIMEOUT):
                start = await proc.stdout.read(5)  # the paced reply has begun
                for conn in list(gw.connections):  # the chat's (and any closing one)
                    conn.ws.transport.abort()
                out, err = await proc.communicate(b"")
    assert proc.returncode == 0, err
    assert (start + out).decode().splitlines()[0] == expected
    assert "the reply was resumed" in err.decode()
