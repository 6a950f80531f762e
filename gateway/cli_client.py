"""``gateway chat`` and ``gateway call``: the terminal face of :mod:`gateway.client`.

Exit codes: 0 success, 1 the server answered an error or the connection failed,
2 bad usage (e.g. params that are not a JSON object or array), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import os
import sys
import threading
from collections.abc import Coroutine
from typing import IO, Any, TypeVar

import orjson

from gateway.client import (
    Client,
    ClientError,
    ConnectionClosed,
    ConnectionLost,
    RpcError,
    Unauthenticated,
    connect,
)

__all__ = [
    "DEFAULT_URL",
    "add_parsers",
    "format_status",
    "main",
    "run_admin_status",
    "run_call",
    "run_chat",
]

DEFAULT_URL = "ws://127.0.0.1:8765/ws"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

T = TypeVar("T")

CHAT_HELP = """\
commands:
  /conversations     list your conversations kept on the server (newest first)
  /open ID           continue conversation ID (shows where it stands)
  /new               start a new conversation with the next message
  /edit TEXT         replace your last message with TEXT (a new branch) and answer again
  /regenerate        another answer to your last message (the old one is kept)
  /models            list the models (* marks yours)
  /model NAME        switch model (/model alone shows the current one)
  /stats             session statistics
  /quit              leave (Ctrl-D at the prompt does too)
Ctrl-C while a reply streams stops the reply; at the prompt it leaves."""

NO_TOKEN = (
    "no token set. Pass --token TOKEN or set GATEWAY_TOKEN: use the token that "
    "`gateway serve` printed at start, an API key from the server's configuration, "
    "or one made with `gateway token --user NAME`."
)
REFUSED_TOKEN = (
    "the gateway did not accept that token. Check --token / GATEWAY_TOKEN: it may be "
    "mistyped, expired, or meant for another gateway."
)


def add_parsers(subparsers: Any) -> None:
    """Add the ``chat`` and ``call`` subcommands; each sets ``func(args) -> exit code``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", help=f"gateway WebSocket URL (default: $GATEWAY_URL, else {DEFAULT_URL})"
    )
    common.add_argument("--token", help="API key or token (default: $GATEWAY_TOKEN)")
    common.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds to wait for a connection, an answer, or the next streamed text (default 60)",
    )

    chat = subparsers.add_parser(
        "chat",
        parents=[common],
        help="interactive streaming chat in the terminal",
        description="Chat with the gateway's models; replies stream as they are written.",
        epilog=CHAT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    chat.add_argument("--model", help="switch to this model before the first message")
    chat.add_argument(
        "--conversation", metavar="ID", help="continue a conversation kept on the server"
    )
    chat.set_defaults(func=run_chat)

    call = subparsers.add_parser(
        "call",
        parents=[common],
        help="call one JSON-RPC method and print its result",
        description=(
            "Call METHOD and print its result as JSON. A streaming method prints its "
            "text as it arrives, then its final result (finishReason, usage) on stderr."
        ),
    )
    call.add_argument("method", help="e.g. chat.listModels")
    call.add_argument(
        "params",
        nargs="?",
        help='a JSON object (named) or array (positional), e.g. \'{"message":"hi"}\'',
    )
    call.set_defaults(func=run_call)

    admin = subparsers.add_parser("admin", help="operator views (admin role)")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    status = admin_sub.add_parser(
        "status",
        parents=[common],
        help="connections, users, streams and models in use, across all workers",
    )
    status.add_argument("--json", action="store_true", help="print the raw admin.status result")
    status.set_defaults(func=run_admin_status)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: ``python -m gateway.cli_client {chat,call} ...``."""
    parser = argparse.ArgumentParser(prog="gateway")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def _target(args: argparse.Namespace) -> tuple[str, str | None]:
    url = args.url or os.environ.get("GATEWAY_URL") or DEFAULT_URL
    return url, args.token or os.environ.get("GATEWAY_TOKEN") or None


def _json(value: Any, *, indent: bool = False) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 if indent else 0).decode()


def _token_hint(exc: BaseException, token: str | None) -> str | None:
    """A plain-language line for a missing or refused token, else None."""
    text = str(exc)
    refused = isinstance(exc, Unauthenticated) or "401" in text or "4500" in text
    if not refused:
        return None
    return NO_TOKEN if token is None else REFUSED_TOKEN


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RpcError):
        data = f" {_json(exc.data)}" if exc.data is not None else ""
        return f"error {exc.code}: {exc.message}{data}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc)


# gateway call


def run_call(args: argparse.Namespace) -> int:
    """``gateway call METHOD [JSON_PARAMS]``."""
    try:
        params = orjson.loads(args.params) if args.params is not None else None
    except orjson.JSONDecodeError as exc:
        print(f"gateway call: params are not valid JSON: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if params is not None and not isinstance(params, dict | list):
        print("gateway call: params must be a JSON object or array", file=sys.stderr)
        return EXIT_USAGE
    url, token = _target(args)
    try:
        return asyncio.run(_call(url, token, args.method, params, args.timeout))
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


async def _call(
    url: str, token: str | None, method: str, params: Any, timeout: float | None
) -> int:
    out, err = sys.stdout, sys.stderr
    streamed = False
    try:
        async with connect(
            url, token=token, reconnect=False, open_timeout=timeout, call_timeout=timeout
        ) as client:
            # Any method may stream: a streaming one answers with deltas first.
            stream = client.request_stream(method, params, idle_timeout=timeout)
            async for text in stream:
                streamed = True
                out.write(text)
                out.flush()
            result = stream.result
    except (ClientError, TimeoutError) as exc:
        if streamed:
            out.write("\n")
        print(_describe(exc), file=err)
        hint = _token_hint(exc, token)
        if hint:
            print(f"gateway call: {hint}", file=err)
        return EXIT_ERROR
    if not streamed:
        print(_json(result, indent=True), file=out)
        return EXIT_OK
    out.write("\n")
    print(_json(result), file=err)
    finish = result.get("finishReason") if isinstance(result, dict) else None
    return EXIT_ERROR if finish == "error" else EXIT_OK


# gateway admin status


def run_admin_status(args: argparse.Namespace) -> int:
    """``gateway admin status``: the admin.status result, as text or JSON."""
    url, token = _target(args)
    try:
        result = asyncio.run(_call_once(url, token, "admin.status", args.timeout))
    except (ClientError, TimeoutError) as exc:
        print(_describe(exc), file=sys.stderr)
        return EXIT_ERROR
    print(_json(result, indent=True) if args.json else format_status(result))
    return EXIT_OK


async def _call_once(url: str, token: str | None, method: str, timeout: float) -> Any:
    async with connect(
        url, token=token, reconnect=False, open_timeout=timeout, call_timeout=timeout
    ) as client:
        return await client.call(method)


def format_status(status: dict[str, Any]) -> str:
    """admin.status as a few lines for a terminal."""
    streams = status["streams"]
    lines = [
        f"node {status['node']}: {status['workers']} worker(s)",
        f"connections {status['connections']} (accepted {status['connectionsAccepted']}), "
        f"users {status['users']}",
        f"streams running {streams['running']}, detached {streams['detached']}",
        f"calls {status['calls']}, errors {sum(status['errors'].values())} "
        f"{_json(status['errors'])}, slow-consumer closes {status['slowConsumerCloses']}",
    ]
    models = status["models"]
    if models:
        lines.append(
            f"{'model':<20} {'streams':>7} {'ops':>7} {'in tok':>9} {'out tok':>9} "
            f"{'failover':>8} {'errors':>6}"
        )
        for name, m in models.items():
            lines.append(
                f"{name:<20} {m['streams']:>7} {m['operations']:>7} {m['inputTokens']:>9} "
                f"{m['outputTokens']:>9} {m['failovers']:>8} {m['upstreamErrors']:>6}"
            )
    return "\n".join(lines)


# gateway chat


class _LoopThread:
    """An event loop in a daemon thread, so the main thread can block in ``input()``.

    The main thread keeps the terminal (readline, Ctrl-C as KeyboardInterrupt);
    the loop keeps the connection alive between prompts.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="gateway-chat", daemon=True
        )
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return self.submit(coro).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


class ChatSession:
    """The chat loop: reads lines, runs commands, streams replies, keeps the history."""

    def __init__(self, runner: _LoopThread, client: Client, out: IO[str], err: IO[str]) -> None:
        self.runner = runner
        self.client = client
        self.out = out
        self.err = err
        self.conversation_id: str | None = None
        """The server-side conversation replies go to (created by the first message)."""
        self.last_user_id: str | None = None
        self.last_answer_id: str | None = None
        self.last_question: str | None = None
        self._reply_task: asyncio.Task[Any] | None = None

    def repl(self, stdin: IO[str]) -> int:
        """Run until /quit or end of input (0), or Ctrl-C at the prompt (130)."""
        interactive = stdin.isatty()
        if interactive:
            with contextlib.suppress(ImportError):
                import readline  # noqa: F401  (line editing and history for input())
            print("Connected. /help lists the commands.", file=self.err)
        while True:
            try:
                line = input("you> ") if interactive else stdin.readline()
            except EOFError:
                line = ""
            except KeyboardInterrupt:
                print(file=self.err)
                return EXIT_INTERRUPTED
            if not line:
                if interactive:
                    print(file=self.err)
                return EXIT_OK
            line = line.strip()
            if not line:
                continue
            try:
                if line.startswith("/"):
                    if self.command(line) is not None:
                        return EXIT_OK
                else:
                    self.send(line)
            except ConnectionClosed as exc:
                print(f"gateway chat: {exc}", file=self.err)
                return EXIT_ERROR
            except (ClientError, TimeoutError) as exc:
                print(_describe(exc), file=self.err)

    def command(self, line: str) -> int | None:
        """Run a /command; returns an exit code to leave, else None."""
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name in ("/quit", "/exit"):
            return EXIT_OK
        if name == "/help":
            print(CHAT_HELP, file=self.out)
        elif name == "/new":
            self.conversation_id = self.last_user_id = self.last_answer_id = None
            print("(new conversation)", file=self.out)
        elif name == "/conversations":
            self.list_conversations()
        elif name == "/open" and arg:
            self.open(arg)
        elif name == "/open":
            print("usage: /open ID (see /conversations)", file=self.err)
        elif name == "/edit":
            if not arg:
                print("usage: /edit TEXT (replaces your last message)", file=self.err)
            elif self.conversation_id is None or self.last_user_id is None:
                print("nothing to edit yet: send a message first", file=self.err)
            else:
                self.send(arg, method="conversation.edit", messageId=self.last_user_id)
        elif name == "/regenerate":
            if self.conversation_id is None or self.last_answer_id is None:
                print("nothing to regenerate yet: send a message first", file=self.err)
            else:
                self.send(None, method="conversation.regenerate", messageId=self.last_answer_id)
        elif name == "/models":
            for model in self.runner.run(self.client.call("chat.listModels")):
                self._print_model(model)
        elif name == "/model" and arg:
            self.runner.run(self.client.call("chat.setModel", arg))
            print(f"model: {arg}", file=self.out)
        elif name == "/model":
            self._print_model(self.runner.run(self.client.call("chat.getCurrentModel")))
        elif name == "/stats":
            print(
                _json(self.runner.run(self.client.call("chat.getSessionStats")), indent=True),
                file=self.out,
            )
        else:
            print(f"unknown command {name}; /help lists the commands", file=self.err)
        return None

    def _print_model(self, model: Any) -> None:
        if not isinstance(model, dict):
            print(_json(model), file=self.out)
            return
        mark = "*" if model.get("current") else " "
        where = f"{model.get('provider', '?')}/{model.get('model', '?')}"
        off = "" if model.get("available", True) else " (unavailable)"
        description = model.get("description") or ""
        print(
            f"{mark} {model.get('name', '?'):<16} {where:<28}{off} {description}".rstrip(),
            file=self.out,
        )

    def list_conversations(self) -> None:
        page = self.runner.run(self.client.call("conversation.list", limit=20))
        if not page["items"]:
            print("(no conversations yet)", file=self.out)
        for item in page["items"]:
            mark = "*" if item["id"] == self.conversation_id else " "
            pin = " [pinned]" if item.get("pinned") else ""
            print(
                f"{mark} {item['id']}  {item['title']}{pin} ({item['messageCount']} messages)",
                file=self.out,
            )

    def open(self, conversation_id: str) -> None:
        """Continue ``conversation_id``: print its last turns and remember its ids."""
        got = self.runner.run(self.client.call("conversation.get", conversationId=conversation_id))
        self.conversation_id = got["conversation"]["id"]
        self.last_user_id = self.last_answer_id = None
        messages = got["messages"]
        for m in messages:
            if m["role"] == "user":
                self.last_user_id, self.last_question = m["id"], m["content"]
            elif m["role"] == "assistant":
                self.last_answer_id = m["id"]
        print(
            f"(conversation {got['conversation']['title']!r}, {len(messages)} messages)",
            file=self.out,
        )
        for m in messages[-4:]:
            who = "you" if m["role"] == "user" else "assistant"
            status = "" if m["status"] == "done" else f" [{m['status']}]"
            print(f"{who}>{status} {m['content']}", file=self.out)

    def send(self, message: str | None, *, method: str = "conversation.send", **ids: str) -> None:
        """Stream the reply to ``message``; Ctrl-C stops the reply, not the program."""
        if self.conversation_id is None:
            made = self.runner.run(self.client.call("conversation.create"))
            self.conversation_id = made["id"]
        future = self.runner.submit(self._reply(message, method, ids))
        try:
            future.result()
        except KeyboardInterrupt:
            task = self._reply_task
            if task is None:
                future.cancel()
                print("[stopped]", file=self.err)
                return
            self.runner.loop.call_soon_threadsafe(task.cancel)
            # A second Ctrl-C while the reply winds down leaves the program.
            future.result()

    async def _reply(self, message: str | None, method: str, ids: dict[str, str]) -> None:
        self._reply_task = asyncio.current_task()
        params: dict[str, Any] = {"conversationId": self.conversation_id, **ids}
        if message is not None:
            params["message"] = message
        stream = self.client.stream(method, **params)
        stopped = False
        try:
            async for text in stream:
                self.out.write(text)
                self.out.flush()
        except asyncio.CancelledError:
            # Ctrl-C: the stream has sent rpc.cancel; the reply ends here, the chat goes on.
            stopped = True
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        except ConnectionLost:
            self.out.write("\n")
            raise
        finally:
            self._reply_task = None
        self.out.write("\n")
        self.out.flush()
        result = stream.result if isinstance(stream.result, dict) else {}
        if stream.resumes:
            # The client resumed the reply by itself after the connection dropped.
            print("[the connection dropped; the reply was resumed]", file=self.err)
        if stopped or result.get("finishReason") == "cancelled":
            # A Ctrl-C the stream absorbed (its final answer said "cancelled") stopped it too.
            print("[stopped]", file=self.err)
        elif result.get("finishReason") == "error":
            print(f"[error: {_describe_result_error(result)}]", file=self.err)
        elif result.get("finishReason") == "length":
            print("[the reply hit the length limit]", file=self.err)
        if result.get("assistantMessageId"):
            self.last_user_id = result.get("userMessageId")
            self.last_answer_id = result["assistantMessageId"]


def _describe_result_error(result: dict[str, Any]) -> str:
    error = result.get("error")
    if isinstance(error, dict):
        return f"{error.get('code')} {error.get('message')}"
    return "the model failed"


def run_chat(args: argparse.Namespace) -> int:
    """``gateway chat``: an interactive (or piped) streaming chat."""
    url, token = _target(args)
    if token is None:
        print(f"gateway chat: {NO_TOKEN}", file=sys.stderr)
        return EXIT_USAGE
    runner = _LoopThread()

    async def open_client() -> Client:
        return await connect(
            url,
            token=token,
            open_timeout=args.timeout,
            call_timeout=args.timeout,
            stream_timeout=args.timeout,
        )

    try:
        try:
            client = runner.run(open_client())
        except (ClientError, TimeoutError) as exc:
            print(f"gateway chat: {_describe(exc)}", file=sys.stderr)
            hint = _token_hint(exc, token)
            if hint:
                print(f"gateway chat: {hint}", file=sys.stderr)
            return EXIT_ERROR
        session = ChatSession(runner, client, sys.stdout, sys.stderr)
        try:
            if args.model:
                session.command(f"/model {args.model}")
            if args.conversation:
                session.open(args.conversation)
            return session.repl(sys.stdin)
        except (ClientError, TimeoutError) as exc:
            print(f"gateway chat: {_describe(exc)}", file=sys.stderr)
            return EXIT_ERROR
        finally:
            try:
                runner.run(client.close(), timeout=10)
            except (Exception, KeyboardInterrupt):  # leaving anyway
                pass
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        runner.stop()


if __name__ == "__main__":
    sys.exit(main())
