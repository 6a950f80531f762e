"""Code blocks, reasoning, and the notes under an answer (failover, cost, dropped turns).

Code and the notes come from real gateways (the offline model answers a request for code
with a fenced block; a configured gateway fails over from a model whose upstream refuses
connections). Reasoning comes from a gateway whose model is the fake OpenAI-compatible
server streaming ``reasoning_content``; the moment while a model still thinks is played by
:mod:`tests.browser.scripted`, a stand-in speaking the wire protocol over real sockets,
which can hold the answer back until the test has looked.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import GatewayProcess, free_port
from tests.browser.helpers import (
    answer,
    ask,
    body_text,
    choose_model,
    expect_connected,
    send,
    sign_in,
    wait_finished,
)
from tests.browser.scripted import ScriptedGateway
from tests.fakes import Reply
from tests.fakes.openai_server import OpenAIFake


def test_code_blocks_are_highlighted_with_a_label_and_a_copy_button(
    open_page: Any, gateway: Any
) -> None:
    page = open_page(permissions=["clipboard-read", "clipboard-write"])
    sign_in(page, gateway.base_url, "user20")
    choose_model(page, "offline-fast")
    assert page.evaluate("window.gatewayChat.highlighterReady()") is True
    done = ask(page, "write some python code that greets people", 1)
    block = done.locator("[data-testid=code-block]")
    expect(block).to_have_count(1)
    expect(block.locator(".code-lang")).to_have_text("python")
    code = block.locator("pre code")
    expect(code).to_have_class(re.compile(r"\bhljs\b"))
    # Highlighted: keywords, strings and names are in their own spans.
    assert code.locator(".hljs-keyword").count() >= 1
    assert code.locator(".hljs-string, .hljs-title").count() >= 1
    source = code.inner_text()
    assert "def " in source or "print(" in source
    # The copy button puts the code itself (not the highlighting) on the clipboard.
    block.get_by_role("button", name="Copy code").click()
    expect(block.get_by_role("button", name="Copy code")).to_have_text("Copied")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.rstrip("\n") == source.rstrip("\n")
    # A reload renders the stored answer the same way.
    page.reload()
    expect_connected(page)
    expect(page.locator("[data-testid=code-block] .code-lang")).to_have_text("python")
    assert page.locator("[data-testid=code-block] .hljs-keyword").count() >= 1


def test_code_stays_plain_without_the_highlighter(open_page: Any, gateway: Any) -> None:
    page = open_page()
    page.route("**/@highlightjs/**", lambda route: route.fulfill(status=404, body="missing"))
    sign_in(page, gateway.base_url, "user21")
    choose_model(page, "offline-fast")
    assert page.evaluate("window.gatewayChat.highlighterReady()") is False
    done = ask(page, "write some python code", 1)
    block = done.locator("[data-testid=code-block]")
    expect(block.locator(".code-lang")).to_have_text("python")
    assert block.locator("pre code span").count() == 0
    expect(block.get_by_role("button", name="Copy code")).to_be_visible()


def test_reasoning_is_shown_collapsed_above_the_answer(open_page: Any) -> None:
    thinking_done = threading.Event()
    with ScriptedGateway() as fake:
        fake.deltas = [
            {"reasoning": "First, the user wants a number. "},
            {"reasoning": "Forty-two is the classic answer."},
            thinking_done,
            {"text": "The answer "},
            {"text": "is **42**."},
        ]
        fake.result = {
            "finishReason": "stop",
            "model": "thinker",
            "usage": {"promptTokens": 9, "completionTokens": 20, "totalTokens": 29},
            "droppedTurns": 0,
        }
        page = open_page()
        page.goto(fake.base_url + "/#token=tok-rhea")
        expect_connected(page)
        send(page, "pick a number")
        box = answer(page).locator("[data-testid=reasoning]")
        # While it thinks: a collapsed "Reasoning…" block, nothing in the answer yet.
        expect(box.locator("summary")).to_have_text("Reasoning…")
        expect(box).not_to_have_attribute("open", "")
        expect(box.locator(".reasoning-body")).to_be_hidden()
        expect(box.locator(".reasoning-body")).to_have_text(
            "First, the user wants a number. Forty-two is the classic answer."
        )
        assert body_text(answer(page)).strip() == ""
        thinking_done.set()
        done = wait_finished(page)
        expect(done.locator(".message-body strong")).to_have_text("42")
        expect(box.locator("summary")).to_have_text("Reasoning")
        # Above the answer, never inside it.
        assert "Forty-two" not in body_text(done)
        order = done.evaluate("li => [...li.children].map(c => c.classList[0])")
        assert order.index("reasoning") < order.index("message-body")
        box.locator("summary").click()
        expect(box.locator(".reasoning-body")).to_be_visible()
        # Once the page shows the stored answer, the reasoning it streamed stays.
        expect(done).to_have_attribute("data-id", "m2")
        expect(box.locator(".reasoning-body")).to_contain_text("classic answer")


FAILOVER_CONFIG = """
default_model = "flaky"

[[models]]
name = "flaky"
provider = "openai"
model = "gpt-test"
base_url = "http://127.0.0.1:{closed}/v1"
api_key_env = "FLAKY_API_KEY"
context_window = 420
max_output_tokens = 150
fallbacks = ["cheap"]

[[models]]
name = "cheap"
provider = "offline"
model = "offline"
context_window = 420
max_output_tokens = 150
price_input_per_mtok = 1000.0
price_output_per_mtok = 2000.0
"""


@pytest.fixture()
def failover_gateway(tmp_path: Path, chromium_path: Path) -> Iterator[GatewayProcess]:
    """A gateway whose default model's upstream refuses connections; it falls back to a
    priced offline model with a small context window."""
    config = tmp_path / "gateway.toml"
    config.write_text(FAILOVER_CONFIG.format(closed=free_port()))
    server = GatewayProcess(
        free_port(),
        tmp_path,
        args=("--config", str(config)),
        env={"FLAKY_API_KEY": "sk-test-not-a-real-key"},
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_failover_cost_and_dropped_turns_are_noted(page: Page, failover_gateway: Any) -> None:
    sign_in(page, failover_gateway.base_url, "user22")
    expect(page.locator("#model-select")).to_have_value("flaky")
    done = ask(page, "hello there", 1)
    expect(done.locator("[data-testid=failover]")).to_have_text(
        "Answered by cheap: flaky was unavailable"
    )
    expect(done.locator(".usage")).to_contain_text("cheap")
    expect(done.locator("[data-testid=cost]")).to_have_text(re.compile(r"^\$\d"))
    expect(done.locator("[data-testid=dropped]")).to_have_count(0)
    # The small context window soon leaves the oldest turns out, and says so.
    for n in range(2, 6):
        done = ask(page, f"question number {n} " + "padding " * 20, n)
        if done.locator("[data-testid=dropped]").count():
            break
    expect(done.locator("[data-testid=dropped]")).to_contain_text("left out")
    # The notes come back with the stored answers after a reload.
    page.reload()
    expect_connected(page)
    expect(answer(page, 0).locator("[data-testid=failover]")).to_be_visible()
    expect(answer(page).locator("[data-testid=dropped]")).to_contain_text("left out")


HOSTILE_CODE = (
    '```"><img src=x onerror="window.__pwned=\'label\'">\n'
    "<img src=x onerror=\"window.__pwned='code'\">\n```\n\n"
    "```python\nprint('<script>window.__pwned = \"script\"</script>')\n```\n"
)


def test_hostile_code_blocks_stay_text(open_page: Any) -> None:
    with ScriptedGateway() as fake:
        fake.deltas = [{"text": HOSTILE_CODE}]
        fake.result = {"finishReason": "stop", "model": "thinker", "droppedTurns": 0}
        page = open_page()
        page.goto(fake.base_url + "/#token=tok-rhea")
        expect_connected(page)
        assert page.evaluate("window.gatewayChat.highlighterReady()") is True
        send(page, "show me")
        done = wait_finished(page)
        blocks = done.locator("[data-testid=code-block]")
        expect(blocks).to_have_count(2)
        expect(blocks.nth(1).locator(".code-lang")).to_have_text("python")
        assert blocks.nth(1).locator(".hljs-string").count() >= 1
        page.wait_for_timeout(300)  # give an image error handler its chance
        assert page.evaluate("window.__pwned") is None
        assert done.locator("img, script").count() == 0
        assert "<img src=x" in blocks.nth(0).locator("code").inner_text()
        assert "<script>" in blocks.nth(1).locator("code").inner_text()


REASONING_CONFIG = """
default_model = "thinker"

[[models]]
name = "thinker"
provider = "openai"
model = "deepseek-fake"
base_url = "{base_url}"
api_key_env = "{key_env}"
"""


@pytest.fixture()
def reasoning_gateway(tmp_path: Path, chromium_path: Path) -> Iterator[GatewayProcess]:
    """A gateway whose model is the fake OpenAI-compatible server (in a thread of its own)
    streaming ``reasoning_content`` before the answer, as DeepSeek and vLLM do."""
    loop = asyncio.new_event_loop()
    reply = Reply(
        reasoning=("The user wants a number. ", "Forty-two is the classic one."),
        text=("The answer ", "is **42**."),
    )
    fake = OpenAIFake(default=reply)
    ready = threading.Event()
    stop = asyncio.Event()

    async def serve() -> None:
        async with fake:
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10), "fake upstream did not start"
    config = tmp_path / "gateway.toml"
    config.write_text(REASONING_CONFIG.format(base_url=fake.base_url, key_env=fake.key_env))
    server = GatewayProcess(free_port(), tmp_path, args=("--config", str(config)), env=fake.env)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


def test_reasoning_from_a_real_provider_stream(page: Page, reasoning_gateway: Any) -> None:
    sign_in(page, reasoning_gateway.base_url, "user23")
    done = ask(page, "pick a number", 1)
    expect(done.locator(".message-body strong")).to_have_text("42")
    box = done.locator("[data-testid=reasoning]")
    expect(box.locator("summary")).to_have_text("Reasoning")
    expect(box).not_to_have_attribute("open", "")
    assert "Forty-two" not in body_text(done)
    box.locator("summary").click()
    expect(box.locator(".reasoning-body")).to_have_text(
        "The user wants a number. Forty-two is the classic one."
    )
    frames = [
        f["params"]
        for f in page.ws_log.received  # type: ignore[attr-defined]
        if isinstance(f, dict) and f.get("method") == "stream.delta"
    ]
    assert any("reasoning" in p for p in frames) and any("text" in p for p in frames)
