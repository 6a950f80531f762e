"""The chat page resumes an answer cut short by a page reload or a dropped socket.

The gateway here serves a slow offline model (``offline-slow``, its default), so an answer
takes several seconds and is still being written when the test cuts in. The offline model
is deterministic: the same question in a fresh conversation gets the same answer, so each
test asks it once more, uninterrupted, in another browser and compares the texts. The text
compared is the one the page streamed into the bubble, read when the bubble stops
streaming: after that the page shows the answer as stored, which would hide a duplicate.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect
from websockets.sync.client import connect

from tests.browser.conftest import GatewayProcess, free_port
from tests.browser.helpers import (
    ANSWER,
    answer,
    body_text,
    calls,
    expect_connected,
    send,
    sign_in,
    wait_for,
    wait_stored,
)

QUESTION = "Tell me how an answer survives a dropped connection and a reload of the page"
SLOW_CONFIG = """\
default_model = "offline-slow"

[[models]]
name = "offline-slow"
provider = "offline"
model = "offline-echo"
context_window = 8192
max_output_tokens = 512
tokens_per_second = 12.0
description = "Offline model, slow enough to be cut in the middle (12 tokens/s)."

[[models]]
name = "offline-fast"
provider = "offline"
model = "offline-echo"
context_window = 8192
max_output_tokens = 512
tokens_per_second = 0.0
description = "Offline model with no delay."
"""
ANSWER_TIMEOUT = 60_000
REMEMBERED = "Object.keys(sessionStorage).filter(k => k.startsWith('gateway.stream.'))"

# Runs in every document the page loads: each time an answer bubble stops streaming, keep
# the text it shows then (the streamed text, before the stored one replaces it).
RECORD_FINISHED = """
window.__finished = [];
new MutationObserver((records) => {
  for (const r of records) {
    const el = r.target;
    if (!(el instanceof Element) || !el.matches('.message.assistant')) continue;
    const was = (r.oldValue || '').split(/\\s+/).includes('streaming');
    if (!was || el.classList.contains('streaming')) continue;
    window.__finished.push({
      text: el.querySelector('.message-body').textContent,
      finish: el.dataset.finish || '',
    });
  }
}).observe(document, {subtree: true, attributes: true, attributeFilter: ['class'],
                      attributeOldValue: true});
"""


def write_config(directory: Path) -> Path:
    path = directory / "slow.toml"
    path.write_text(SLOW_CONFIG)
    return path


@pytest.fixture(scope="module")
def slow_gateway(
    tmp_path_factory: pytest.TempPathFactory, chromium_path: Path
) -> Iterator[GatewayProcess]:
    logs = tmp_path_factory.mktemp("resume-gateway")
    server = GatewayProcess(free_port(), logs, args=("--config", str(write_config(logs))))
    server.start()
    try:
        yield server
    finally:
        server.stop()


class TcpProxy:
    """Forwards 127.0.0.1:port to the gateway; ``down()`` cuts every connection at once.

    The page is loaded through it, so its WebSocket goes through it too. A cut ends both
    TCP connections with no WebSocket close frame (the browser reports 1006, the gateway
    an abnormal closure), like a network that went away; while down, new connections are
    closed as soon as they are accepted.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.lock = threading.Lock()
        self.open: list[socket.socket] = []
        self.is_down = False
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                if self.is_down:
                    _abort(client)
                    continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                _abort(client)
                continue
            with self.lock:
                self.open += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
        except OSError:
            _abort(src)
            _abort(dst)

    def down(self) -> None:
        with self.lock:
            self.is_down = True
            cut, self.open = self.open, []
            self.cuts += 1
        for sock in cut:
            _abort(sock)

    def up(self) -> None:
        with self.lock:
            self.is_down = False

    def close(self) -> None:
        self.down()
        self.listener.close()


def _abort(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0); shutdown first wakes a thread blocked reading it."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


@pytest.fixture()
def proxy(slow_gateway: GatewayProcess) -> Iterator[TcpProxy]:
    p = TcpProxy(slow_gateway.port)
    try:
        yield p
    finally:
        p.close()


def recording_page(open_page: Any) -> Page:
    pg: Page = open_page()
    pg.add_init_script(RECORD_FINISHED)
    return pg


def finished(pg: Page, count: int = 1) -> list[dict[str, str]]:
    """The first ``count`` answers this document saw stop streaming (waits for them)."""
    wait_for(
        lambda: pg.evaluate("window.__finished.length") >= count,
        "an answer stopped streaming",
        timeout=ANSWER_TIMEOUT / 1000,
    )
    return pg.evaluate("window.__finished")[:count]  # type: ignore[no-any-return]


def uninterrupted(open_page: Any, base_url: str, user: str) -> Page:
    """Another browser asking QUESTION, left alone: its answer is the expected text."""
    pg = recording_page(open_page)
    sign_in(pg, base_url, user)
    send(pg, QUESTION)
    return pg


def expected_text(pg: Page) -> str:
    [done] = finished(pg)
    assert done["finish"] == "stop", done
    assert "I am offline-slow." in done["text"], done
    return done["text"]


def deltas(pg: Page, call_id: int) -> list[dict[str, Any]]:
    """The ``stream.delta`` params the page received for request ``call_id``."""
    return [
        f["params"]
        for f in pg.ws_log.received  # type: ignore[attr-defined]
        if isinstance(f, dict)
        and f.get("method") == "stream.delta"
        and f.get("params", {}).get("id") == call_id
    ]


def started(pg: Page) -> None:
    """Wait until the answer has some text, and check it is not finished yet."""
    wait_for(lambda: len(body_text(answer(pg))) > 30, "the answer started")
    assert answer(pg).get_attribute("data-finish") is None, "answered before the test cut in"


def test_a_reload_mid_answer_continues_the_same_answer(open_page: Any, slow_gateway: Any) -> None:
    """Reloaded mid-answer, the page replays the stream and ends with the uninterrupted text."""
    base = uninterrupted(open_page, slow_gateway.base_url, "alice")
    page = recording_page(open_page)
    sign_in(page, slow_gateway.base_url, "bob")
    send(page, QUESTION)
    started(page)
    [asked] = calls(page, "conversation.send")
    stream_id = deltas(page, asked["id"])[0]["streamId"]

    page.reload()
    expect_connected(page)
    [done] = finished(page)
    assert done["text"] == expected_text(base)
    assert done["finish"] == "stop"
    # It was resumed, from the start (nothing of it is stored while it is written).
    [resumed] = calls(page, "stream.resume")
    assert resumed["params"] == {"streamId": stream_id, "after": -1}
    assert calls(page, "conversation.send") == [asked], "the question was not asked again"
    # It ends like any answer, and the stored conversation has it whole.
    wait_stored(page, 1, timeout=ANSWER_TIMEOUT)
    expect(answer(page)).to_have_attribute("data-finish", "stop")
    expect(answer(page).locator(".usage")).to_contain_text("tokens")
    expect(page.locator(".message.streaming")).to_have_count(0)
    assert page.evaluate(REMEMBERED) == [], "the tab forgets an answer that ended"
    page.reload()
    expect_connected(page)
    wait_stored(page, 1)
    assert body_text(answer(page)).strip() == done["text"].strip()
    assert len(calls(page, "stream.resume")) == 1, "a finished answer is not resumed"


def test_a_dropped_socket_resumes_after_the_last_seq(
    open_page: Any, slow_gateway: Any, proxy: TcpProxy
) -> None:
    """Cut off mid-answer, the page resumes after the last seq it got: no text lost or doubled."""
    base = uninterrupted(open_page, slow_gateway.base_url, "carol")
    page = recording_page(open_page)
    sign_in(page, proxy.base_url, "dave")
    send(page, QUESTION)
    started(page)
    [asked] = calls(page, "conversation.send")

    proxy.down()
    expect(page.locator("#status")).to_have_attribute("data-state", "reconnecting")
    seen = deltas(page, asked["id"])  # all the first socket delivered
    proxy.up()
    expect_connected(page, timeout=ANSWER_TIMEOUT)
    [done] = finished(page)
    assert done["text"] == expected_text(base)
    assert done["finish"] == "stop"
    [resumed] = calls(page, "stream.resume")
    assert resumed["params"] == {"streamId": seen[0]["streamId"], "after": seen[-1]["seq"]}
    assert seen[-1]["seq"] >= 0
    assert calls(page, "conversation.send") == [asked]
    # The same bubble went on: one answer, stored whole.
    wait_stored(page, 1, timeout=ANSWER_TIMEOUT)
    expect(page.locator(ANSWER)).to_have_count(1)
    expect(answer(page).locator(".usage")).to_contain_text("tokens")
    assert body_text(answer(page)).strip() == done["text"].strip()


def test_stop_after_a_reload_stops_the_resumed_answer(open_page: Any, slow_gateway: Any) -> None:
    """Stop on a resumed answer sends stream.cancel; the page keeps what the gateway kept."""
    page = recording_page(open_page)
    sign_in(page, slow_gateway.base_url, "erin")
    send(page, QUESTION)
    started(page)
    [asked] = calls(page, "conversation.send")
    stream_id = deltas(page, asked["id"])[0]["streamId"]
    page.reload()
    expect_connected(page)
    expect(page.locator("#stop")).to_be_visible()  # following the stored answer again
    page.click("#stop")
    [done] = finished(page)
    assert done["finish"] == "cancelled"
    assert calls(page, "stream.cancel")[0]["params"] == {"streamId": stream_id}
    # What the page showed is what the gateway kept, no more and no less.
    wait_stored(page, 1, timeout=ANSWER_TIMEOUT)
    expect(answer(page).locator(".finish")).to_have_text("Stopped")
    page.reload()
    expect_connected(page)
    wait_stored(page, 1)
    assert body_text(answer(page)).strip() == done["text"].strip()
    assert done["text"].strip()


def kill(server: GatewayProcess) -> None:
    """SIGKILL: no drain, the process and what it held in memory are gone."""
    proc, server.proc = server.proc, None
    assert proc is not None
    proc.kill()
    proc.wait(timeout=15)


def test_an_answer_the_restarted_gateway_lost_shows_interrupted(
    open_page: Any, tmp_path: Path, chromium_path: Path
) -> None:
    """-32040 after the gateway was killed: interrupted, with the text it had, no spinner."""
    server = GatewayProcess(free_port(), tmp_path, args=("--config", str(write_config(tmp_path))))
    server.start()
    try:
        page = recording_page(open_page)
        sign_in(page, server.base_url, "frank")
        send(page, QUESTION)
        started(page)
        kill(server)  # the memory store's stream log dies with the process
        expect(page.locator("#status")).to_have_attribute("data-state", "reconnecting")
        server.start()
        expect_connected(page, timeout=ANSWER_TIMEOUT)
        [done] = finished(page)
        assert len(calls(page, "stream.resume")) == 1
        # No endless spinner: the answer ends, said to be interrupted, with the text it had,
        # also once shown as stored (the dead gateway stored none of it).
        assert done["finish"] == "error"
        assert "You said:" in done["text"]
        wait_stored(page, 1, timeout=ANSWER_TIMEOUT)
        expect(page.locator(".message.streaming")).to_have_count(0)
        expect(answer(page).locator(".finish")).to_contain_text("Interrupted")
        assert body_text(answer(page)).strip() == done["text"].strip()
    finally:
        server.stop()


def stream_list(port: int, user: str) -> list[dict[str, Any]]:
    """``stream.list`` for ``user``, asked over a connection of its own."""
    with connect(f"ws://127.0.0.1:{port}/ws") as ws:
        for request in (
            {"jsonrpc": "2.0", "id": 1, "method": "auth.login", "params": {"token": f"tok-{user}"}},
            {"jsonrpc": "2.0", "id": 2, "method": "stream.list"},
        ):
            ws.send(json.dumps(request))
            while (frame := json.loads(ws.recv(timeout=15))).get("id") != request["id"]:
                pass
        return frame["result"]  # type: ignore[no-any-return]


def test_a_gap_shows_the_answer_interrupted_until_it_is_stored(
    open_page: Any, tmp_path: Path, chromium_path: Path
) -> None:
    """-32041 after and from the start: interrupted with its text, then shown whole once stored."""
    config = write_config(tmp_path)
    config.write_text(f"{SLOW_CONFIG}\n[streams]\nmax_pieces = 8\n")
    server = GatewayProcess(free_port(), tmp_path, args=("--config", str(config)))
    server.start()
    cut = TcpProxy(server.port)
    try:
        page = recording_page(open_page)
        sign_in(page, cut.base_url, "gina")
        send(page, QUESTION)
        started(page)
        [asked] = calls(page, "conversation.send")
        cut.down()
        expect(page.locator("#status")).to_have_attribute("data-state", "reconnecting")
        seen = deltas(page, asked["id"])
        # The log keeps 8 pieces: wait until what the page missed is no longer kept.
        wait_for(
            lambda: stream_list(server.port, "gina")[0]["lastSeq"] > seen[-1]["seq"] + 12,
            "the stream went on past its log's length",
            timeout=ANSWER_TIMEOUT / 1000,
        )
        cut.up()
        [done] = finished(page)
        # Resumed after its seq (a gap), then from the start (a gap too): interrupted, with
        # exactly the text the first socket delivered.
        params = [c["params"] for c in calls(page, "stream.resume")]
        stream_id = seen[0]["streamId"]
        assert params == [
            {"streamId": stream_id, "after": seen[-1]["seq"]},
            {"streamId": stream_id, "after": -1},
        ]
        assert done["finish"] == "error"
        assert done["text"].strip() == "".join(d["text"] for d in seen).strip()
        expect(page.locator(".message.streaming")).to_have_count(0)
        # The gateway finishes and stores it meanwhile; the page then shows it whole.
        expect(page.locator(f"{ANSWER}[data-finish=stop]")).to_have_count(1, timeout=ANSWER_TIMEOUT)
        assert body_text(answer(page)).startswith(done["text"].strip())
        assert "I am offline-slow." in body_text(answer(page))
    finally:
        cut.close()
        server.stop()
