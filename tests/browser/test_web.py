"""The chat page in web/, driven in headless Chromium against a real gateway subprocess.

Each test signs in as its own user (see conftest.USERS) so server-side choices
such as the current model never leak between tests. The "offline" model streams
about 30 words a second; "offline-fast" streams without delay. Both answer
``... You said: "<the user's words>". ...``, which lets markdown and hostile
payloads typed by the user come back as model output.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.helpers import (
    ANSWER,
    LONG_MESSAGE,
    answer,
    body_text,
    calls,
    choose_model,
    expect_connected,
    message_count,
    send,
    sign_in,
    wait_finished,
    wait_for,
    wait_stored,
)

REPO = Path(__file__).resolve().parents[2]


def send_calls(page: Page) -> list[dict[str, Any]]:
    return calls(page, "conversation.send")


# ---------------------------------------------------------------------------
# signing in


def test_sign_in_with_token_in_fragment(page: Page, gateway: Any) -> None:
    sign_in(page, gateway.base_url, "alice")
    # The token leaves the address bar and is remembered by the browser.
    assert "token" not in page.evaluate("location.href")
    assert page.evaluate("localStorage.getItem('gateway.token')") == "tok-alice"
    expect(page.locator("#user-name")).to_have_text("alice")
    expect(page.locator("#prompt")).to_be_focused()
    logins = calls(page, "auth.login")
    assert logins and logins[0]["params"] == {"token": "tok-alice"}
    # First frame on the socket is the login.
    assert page.ws_log.sent[0]["method"] == "auth.login"  # type: ignore[attr-defined]

    page.reload()
    expect_connected(page)
    expect(page.locator("#sign-in-view")).to_be_hidden()

    # Signing out asks first; Cancel keeps the session.
    page.click("#sign-out")
    expect(page.locator("#confirm-dialog")).to_be_visible()
    page.click("[data-testid=confirm-cancel]")
    expect(page.locator("#confirm-dialog")).to_be_hidden()
    expect_connected(page)
    page.click("#sign-out")
    page.click("[data-testid=confirm-ok]")
    expect(page.locator("#sign-in-view")).to_be_visible()
    expect(page.locator("#status")).to_have_attribute("data-state", "signed-out")
    assert page.evaluate("localStorage.getItem('gateway.token')") is None


def test_sign_in_survives_a_new_tab(context_factory: Any, gateway: Any) -> None:
    from tests.browser.conftest import instrument

    ctx = context_factory()
    first = instrument(ctx.new_page())
    sign_in(first, gateway.base_url, "pia")
    # A new tab of the same browser, opened without the link: signed in already.
    second = instrument(ctx.new_page())
    second.goto(gateway.base_url + "/")
    expect_connected(second)
    expect(second.locator("#sign-in-view")).to_be_hidden()
    assert calls(second, "auth.login")[0]["params"] == {"token": "tok-pia"}
    # Signing out in one tab signs out the other as well.
    second.click("#sign-out")
    second.click("[data-testid=confirm-ok]")
    expect(first.locator("#sign-in-view")).to_be_visible()
    expect(first.locator("#sign-in-message")).to_contain_text("another tab")
    assert not first.page_errors and not second.page_errors


def test_sign_in_with_typed_token_keyboard_only(page: Page, gateway: Any) -> None:
    page.goto(gateway.base_url + "/")
    expect(page.locator("#sign-in-view")).to_be_visible()
    expect(page.locator("#status")).to_have_attribute("data-state", "signed-out")
    expect(page.locator("#token-input")).to_be_focused()
    page.keyboard.type("tok-bob")
    page.keyboard.press("Enter")
    expect_connected(page)
    expect(page.locator("#chat-view")).to_be_visible()
    expect(page.locator("#model-select")).to_be_enabled()  # the models arrived
    options = page.locator("#model-select option")
    names = options.evaluate_all("os => os.map(o => o.value)")
    assert {"offline", "offline-fast"} <= set(names)
    expect(page.locator("#model-select")).to_have_value("offline")
    # The prompt has focus: type and send with the keyboard alone.
    expect(page.locator("#prompt")).to_be_focused()
    page.keyboard.type("hello from the keyboard")
    page.keyboard.press("Enter")
    expect(page.locator(".message.user")).to_have_count(1)
    wait_finished(page)


def test_rejected_token_shows_message(page: Page, gateway: Any) -> None:
    page.goto(gateway.base_url + "/#token=not-a-real-token")
    msg = page.locator("#sign-in-message")
    expect(msg).to_be_visible()
    expect(msg).to_contain_text("not accepted")
    expect(page.locator("#status")).to_have_attribute("data-state", "signed-out")
    expect(page.locator("#sign-in-view")).to_be_visible()
    assert page.evaluate("localStorage.getItem('gateway.token')") is None
    # No reconnect loop after a 45xx close: a single socket was opened.
    page.wait_for_timeout(1500)
    assert len(calls(page, "auth.login")) == 1

    # A good token typed into the form then works.
    page.fill("#token-input", "tok-bob")
    page.click("#sign-in")
    expect_connected(page)
    expect(msg).to_be_hidden()


def test_expired_token_shows_sign_in(page: Page, gateway: Any) -> None:
    # The gateway answers -32002 and closes with 4501 when a token has expired;
    # play that part here so the test needs no clock tricks.
    def route(ws: Any) -> None:
        def on_message(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame.get("method") == "auth.login":
                error = {"code": -32002, "message": "token expired"}
                ws.send(json.dumps({"jsonrpc": "2.0", "id": frame["id"], "error": error}))
                ws.close(code=4501, reason="token expired")

        ws.on_message(on_message)

    page.route_web_socket(re.compile(r".*/ws$"), route)
    page.goto(gateway.base_url + "/#token=tok-old")
    msg = page.locator("#sign-in-message")
    expect(msg).to_contain_text("expired")
    expect(page.locator("#sign-in-view")).to_be_visible()
    expect(page.locator("#status")).to_have_attribute("data-state", "signed-out")


# ---------------------------------------------------------------------------
# models


def test_model_switch_persists_after_reload(page: Page, gateway: Any, open_page: Any) -> None:
    sign_in(page, gateway.base_url, "carol")
    expect(page.locator("#model-select")).to_have_value("offline")
    choose_model(page, "offline-fast")
    sets = calls(page, "chat.setModel")
    assert sets[-1]["params"] in ({"modelName": "offline-fast"}, ["offline-fast"])

    page.reload()
    expect_connected(page)
    expect(page.locator("#model-select")).to_have_value("offline-fast")

    # The choice lives on the gateway: another browser signed in as carol sees it too.
    other = open_page()
    sign_in(other, gateway.base_url, "carol")
    expect(other.locator("#model-select")).to_have_value("offline-fast")

    # And answers come from it.
    send(page, "which model is this")
    done = wait_finished(page)
    expect(done.locator(".usage")).to_contain_text("offline-fast")
    assert "offline-fast" in body_text(done)


# ---------------------------------------------------------------------------
# conversation


def test_streaming_tokens_and_history(page: Page, gateway: Any) -> None:
    sign_in(page, gateway.base_url, "dave")
    # Record how the answer's text grows, from inside the page.
    page.evaluate(
        """() => {
        window.__growth = [];
        const log = document.getElementById('messages');
        new MutationObserver(() => {
          const a = log.querySelector('.message.assistant .message-body');
          if (a) window.__growth.push([performance.now(), a.textContent.length]);
        }).observe(log, {subtree: true, childList: true, characterData: true});
      }"""
    )
    send(page, "Tell me something about streams")
    expect(page.locator("#stop")).to_be_visible()
    expect(page.locator("#send")).to_be_hidden()
    done = wait_finished(page)
    expect(done).to_have_attribute("data-finish", "stop")
    growth = page.evaluate("window.__growth")
    lengths = sorted({n for _, n in growth if n > 0})
    assert len(lengths) >= 10, f"answer did not stream in pieces: {lengths}"
    span_ms = growth[-1][0] - next(t for t, n in growth if n > 0)
    assert span_ms > 500, f"the whole answer arrived at once ({span_ms:.0f} ms)"

    text = body_text(done)
    assert 'You said: "Tell me something about streams".' in text
    expect(page.locator(".message.user")).to_have_text(
        re.compile("Tell me something about streams")
    )
    usage = done.locator(".usage")
    expect(usage).to_contain_text("tokens")
    expect(usage).to_contain_text("offline")
    expect(page.locator("#send")).to_be_visible()
    expect(page.locator("#stop")).to_be_hidden()
    wait_stored(page, 1)

    # The second turn goes to the same conversation; the gateway adds the history itself.
    send(page, "And a second question")
    wait_stored(page, 2)
    sent = send_calls(page)
    assert len(sent) == 2
    first_id = sent[0]["params"]["conversationId"]
    assert sent[0]["params"] == {
        "conversationId": first_id,
        "message": "Tell me something about streams",
    }
    assert sent[1]["params"] == {"conversationId": first_id, "message": "And a second question"}
    # The model saw two more messages the second time.
    counts = [message_count(body_text(answer(page, i))) for i in (0, 1)]
    assert counts[1] == counts[0] + 2, counts


def test_stop_keeps_partial_answer(page: Page, gateway: Any) -> None:
    sign_in(page, gateway.base_url, "erin")
    send(page, LONG_MESSAGE)
    streaming = answer(page)
    wait_for(lambda: len(body_text(streaming)) > 40, "some text streamed")
    page.click("#stop")
    done = wait_finished(page)
    expect(done).to_have_attribute("data-finish", "cancelled")
    expect(done.locator(".finish")).to_have_text("Stopped")
    kept = body_text(done)
    assert len(kept) > 40
    cancels = calls(page, "rpc.cancel")
    assert len(cancels) == 1
    assert "id" not in cancels[0], "rpc.cancel must be a notification"
    assert cancels[0]["params"] == {"id": send_calls(page)[0]["id"]}
    results = [
        f
        for f in page.ws_log.received  # type: ignore[attr-defined]
        if isinstance(f, dict) and f.get("id") == cancels[0]["params"]["id"] and "result" in f
    ]
    assert results and results[0]["result"]["finishReason"] == "cancelled"
    # Nothing more arrives, and the page is ready for the next message.
    page.wait_for_timeout(700)
    assert body_text(done) == kept
    expect(page.locator("#send")).to_be_visible()
    expect(page.locator("#regenerate")).to_be_visible()

    # The same question again gives the whole (deterministic) answer: the stop cut it short.
    page.click("#regenerate")
    full = body_text(wait_finished(page, timeout=30_000))
    assert full.startswith(kept.rstrip())
    assert len(full) > len(kept)


def test_regenerate_asks_again_with_the_same_history(page: Page, gateway: Any) -> None:
    sign_in(page, gateway.base_url, "frank")
    choose_model(page, "offline-fast")
    send(page, "first question")
    wait_stored(page, 1)
    send(page, "second question")
    wait_stored(page, 2)
    first_try = body_text(answer(page, 1))
    expect(page.locator("#regenerate")).to_be_visible()

    page.click("#regenerate")
    expect(page.locator(ANSWER)).to_have_count(2)
    expect(page.locator(".message.user")).to_have_count(2)
    wait_stored(page, 2)
    second_try = answer(page, 1)
    expect(second_try).to_have_attribute("data-finish", "stop")
    regens = calls(page, "conversation.regenerate")
    assert len(regens) == 1
    ids = [
        f["result"]["assistantMessageId"]
        for f in page.ws_log.received  # type: ignore[attr-defined]
        if isinstance(f, dict)
        and isinstance(f.get("result"), dict)
        and "assistantMessageId" in f["result"]
    ]
    assert regens[0]["params"]["messageId"] == ids[1]
    # Same history, same (deterministic) answer, now the second version of it.
    assert body_text(second_try) == first_try
    expect(second_try.locator(".pager-pos")).to_have_text("2/2")


def test_new_chat_starts_empty(page: Page, gateway: Any) -> None:
    sign_in(page, gateway.base_url, "quinn")
    choose_model(page, "offline-fast")
    expect(page.locator("#empty-state")).to_be_visible()
    send(page, "remember this")
    wait_stored(page, 1)
    alone = message_count(body_text(answer(page)))
    expect(page.locator("#empty-state")).to_be_hidden()

    page.click("#new-chat")
    expect(page.locator(".message")).to_have_count(0)
    expect(page.locator("#empty-state")).to_be_visible()
    expect(page.locator("#prompt")).to_be_focused()

    send(page, "a fresh start")
    wait_stored(page, 1)
    first, second = (c["params"]["conversationId"] for c in send_calls(page))
    assert first != second
    # Nothing of the first conversation reached the model.
    assert message_count(body_text(answer(page))) == alone
    expect(page.locator("#conversation-list .conversation-item")).to_have_count(2)


def test_enter_sends_and_shift_enter_adds_a_line(page: Page, gateway: Any) -> None:
    sign_in(page, gateway.base_url, "lena")
    choose_model(page, "offline-fast")
    page.click("#prompt")
    page.keyboard.type("line one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("line two")
    expect(page.locator(".message")).to_have_count(0)
    expect(page.locator("#prompt")).to_have_value("line one\nline two")
    page.keyboard.press("Enter")
    expect(page.locator(".message.user")).to_have_count(1)
    expect(page.locator("#prompt")).to_have_value("")
    wait_finished(page)
    assert send_calls(page)[0]["params"]["message"] == "line one\nline two"
    # The user's own text is shown as typed, line break included.
    assert page.locator(".message.user .message-body").inner_text() == "line one\nline two"


def test_auto_scroll_stops_when_scrolled_up(open_page: Any, gateway: Any) -> None:
    page = open_page(viewport={"width": 900, "height": 480})
    sign_in(page, gateway.base_url, "gina")
    choose_model(page, "offline-fast")
    for i in range(3):
        send(page, f"filler {i} " + LONG_MESSAGE)
        wait_finished(page, i)
    scroller = page.locator("#scroller")

    def metrics() -> dict[str, float]:
        return dict(
            scroller.evaluate(
                "s => ({top: s.scrollTop, height: s.scrollHeight, client: s.clientHeight})"
            )
        )

    m = metrics()
    assert m["height"] > m["client"] * 1.5, "conversation should overflow the viewport"
    assert m["height"] - m["top"] - m["client"] < 60, "follows the conversation to the bottom"

    choose_model(page, "offline")
    send(page, LONG_MESSAGE)
    streaming = answer(page)
    wait_for(lambda: len(body_text(streaming)) > 20, "streaming started")
    # The person scrolls up to read something.
    page.mouse.move(450, 200)
    page.mouse.wheel(0, -600)
    wait_for(
        lambda: metrics()["height"] - metrics()["top"] - metrics()["client"] > 200, "scrolled up"
    )
    top = metrics()["top"]
    before = len(body_text(streaming))
    wait_for(lambda: len(body_text(streaming)) > before + 30, "more text streamed")
    assert abs(metrics()["top"] - top) < 5, "page must not jump back down while the person reads"
    expect(page.locator("#jump")).to_be_visible()
    page.click("#jump")
    wait_for(
        lambda: metrics()["height"] - metrics()["top"] - metrics()["client"] < 60, "back at bottom"
    )
    wait_finished(page)
    m = metrics()
    assert m["height"] - m["top"] - m["client"] < 60, "keeps following after jumping back"


# ---------------------------------------------------------------------------
# rendering of model output


def test_markdown_is_rendered(page: Page, gateway: Any) -> None:
    lib = page.request.get(gateway.base_url + "/node_modules/marked/lib/marked.umd.js")
    purify = page.request.get(gateway.base_url + "/node_modules/dompurify/dist/purify.min.js")
    assert lib.ok and purify.ok, "markdown libraries missing: run `npm install` in web/"
    sign_in(page, gateway.base_url, "henry")
    choose_model(page, "offline-fast")
    send(
        page, "Show **bold words** and `inline code` and [a link](http://example.invalid/x) please"
    )
    done = wait_finished(page)
    body = done.locator(".message-body")
    expect(body.locator("strong")).to_have_text("bold words")
    expect(body.locator("p > code")).to_have_text("inline code")
    link = body.locator("a")
    expect(link).to_have_text("a link")
    expect(link).to_have_attribute("href", "http://example.invalid/x")
    expect(link).to_have_attribute("target", "_blank")
    expect(link).to_have_attribute("rel", re.compile("noopener"))
    # The user's own message stays plain text.
    user = page.locator(".message.user .message-body")
    expect(user).to_contain_text("**bold words**")
    expect(user.locator("strong")).to_have_count(0)


def test_plain_text_when_markdown_libraries_are_missing(page: Page, gateway: Any) -> None:
    page.route(
        re.compile(r".*/node_modules/.*"),
        lambda route: route.fulfill(status=404, body="not found"),
    )
    sign_in(page, gateway.base_url, "mike")
    assert page.evaluate("window.gatewayChat.markdownReady()") is False
    choose_model(page, "offline-fast")
    send(page, "Show **bold words** and <b>tags</b>")
    done = wait_finished(page)
    body = done.locator(".message-body")
    expect(body).to_contain_text("**bold words**")
    expect(body).to_contain_text("<b>tags</b>")
    assert body.evaluate("b => b.children.length") == 0  # nothing but text


HOSTILE = (
    "<script>window.__pwned='script'</script> "
    "<img src=x onerror=\"window.__pwned='img'\"> "
    "<svg onload=\"window.__pwned='svg'\"></svg> "
    "<iframe src=\"javascript:window.top.__pwned='iframe'\"></iframe> "
    "[click me](javascript:window.__pwned='link') "
    "<a href=\"javascript:window.__pwned='a'\">x</a> "
    "<details open ontoggle=\"window.__pwned='details'\">d</details>"
)


@pytest.mark.parametrize("markdown", [True, False], ids=["markdown", "plain"])
def test_hostile_model_output_is_inert(page: Page, gateway: Any, markdown: bool) -> None:
    if not markdown:
        page.route(
            re.compile(r".*/node_modules/.*"),
            lambda route: route.fulfill(status=404, body="not found"),
        )
    sign_in(page, gateway.base_url, "ivan" if markdown else "nora")
    assert page.evaluate("window.gatewayChat.markdownReady()") is markdown
    choose_model(page, "offline-fast")
    send(page, HOSTILE)
    done = wait_finished(page)
    assert "You said:" in body_text(done)
    # Let any image error / toggle handlers have their chance.
    page.wait_for_timeout(500)
    for link in done.locator("a").all():
        link.click(modifiers=["Alt"], no_wait_after=True, force=True)
    page.wait_for_timeout(300)
    assert page.evaluate("window.__pwned") is None
    bad = page.locator("#messages").evaluate(
        """m => Array.from(m.querySelectorAll('*')).filter(e =>
            ['SCRIPT', 'IMG', 'IFRAME', 'SVG', 'OBJECT', 'EMBED'].includes(e.tagName.toUpperCase())
            || Array.from(e.attributes).some(a => a.name.startsWith('on'))
            || /^\\s*javascript:/i.test(e.getAttribute('href') || '')
            || /^\\s*javascript:/i.test(e.getAttribute('src') || '')
        ).map(e => e.outerHTML)"""
    )
    assert bad == []
    # The user's message shows exactly what was typed.
    user_text = page.locator(".message.user .message-body").inner_text()
    assert user_text == HOSTILE


# ---------------------------------------------------------------------------
# errors and connection


def _fail_chat_with(error: dict[str, Any], *, after_text: str | None = None) -> Any:
    """A WebSocket route that passes everything through but answers chat calls itself."""

    def route(ws: Any) -> None:
        server = ws.connect_to_server()

        def from_page(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame.get("method") == "conversation.send":
                rid = frame["id"]
                if after_text is None:
                    ws.send(json.dumps({"jsonrpc": "2.0", "id": rid, "error": error}))
                else:
                    delta = {"id": rid, "seq": 0, "text": after_text}
                    ws.send(
                        json.dumps({"jsonrpc": "2.0", "method": "stream.delta", "params": delta})
                    )
                    result = {
                        "finishReason": "error",
                        "model": "offline",
                        "error": error,
                        "usage": {"promptTokens": 3, "completionTokens": 2, "totalTokens": 5},
                    }
                    ws.send(json.dumps({"jsonrpc": "2.0", "id": rid, "result": result}))
                return
            server.send(message)

        ws.on_message(from_page)
        server.on_message(lambda message: ws.send(message))

    return route


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            {
                "code": -32004,
                "message": "limit exceeded",
                "data": {"limit": "rate", "retryAfter": 7.2},
            },
            "Too many requests, try again in 8s",
        ),
        (
            {"code": -32006, "message": "model unavailable"},
            "not available",
        ),
        (
            {
                "code": -32013,
                "message": "upstream unavailable",
                "data": {"retryable": True, "provider": "openai", "status": 503},
            },
            "provider (openai) is unavailable",
        ),
    ],
    ids=["limit", "model-unavailable", "upstream-unavailable"],
)
def test_gateway_errors_are_shown_in_words(
    page: Page, gateway: Any, error: dict[str, Any], expected: str
) -> None:
    page.route_web_socket(re.compile(r".*/ws$"), _fail_chat_with(error))
    sign_in(page, gateway.base_url, "omar")
    send(page, "hello")
    done = wait_finished(page)
    expect(done).to_have_attribute("data-finish", "error")
    err = done.locator(".error")
    expect(err).to_contain_text(expected)
    expect(err.get_by_role("button", name="Retry")).to_be_visible()
    # Still connected and usable.
    expect_connected(page)
    expect(page.locator("#prompt")).to_be_enabled()


def test_error_after_partial_answer_keeps_text(page: Page, gateway: Any) -> None:
    error = {"code": -32014, "message": "upstream timeout", "data": {"retryable": True}}
    page.route_web_socket(re.compile(r".*/ws$"), _fail_chat_with(error, after_text="Partial words"))
    sign_in(page, gateway.base_url, "omar")
    send(page, "hello")
    done = wait_finished(page)
    expect(done).to_have_attribute("data-finish", "error")
    assert body_text(done).startswith("Partial words")
    expect(done.locator(".error")).to_contain_text("took too long")
    expect(done.locator(".usage")).to_contain_text("5 tokens")


def test_reconnects_after_server_restart(page: Page, own_gateway: Any) -> None:
    sign_in(page, own_gateway.base_url, "alice")
    choose_model(page, "offline-fast")
    send(page, "before the restart")
    wait_finished(page)

    own_gateway.stop()
    expect(page.locator("#status")).to_have_attribute("data-state", "reconnecting", timeout=15_000)
    expect(page.locator("#status")).to_contain_text("Reconnecting")
    own_gateway.start()
    expect_connected(page, timeout=30_000)
    # Signed in again with the remembered token, conversation kept, and chatting works.
    assert len(calls(page, "auth.login")) >= 2
    expect(page.locator(".message.user")).to_have_count(1)
    send(page, "after the restart")
    done = wait_finished(page, 1, timeout=30_000)
    expect(done).to_have_attribute("data-finish", "stop")
    assert 'You said: "after the restart"' in body_text(done)
    # The gateway kept the conversation over its restart: the model saw the first turn.
    sent = send_calls(page)
    assert sent[-1]["params"]["conversationId"] == sent[0]["params"]["conversationId"]
    assert message_count(body_text(done)) == message_count(body_text(answer(page, 0))) + 2
    # And a reload after the restart shows both turns, as stored.
    page.reload()
    expect_connected(page)
    expect(page.locator(".message.user")).to_have_count(2)


# ---------------------------------------------------------------------------
# layout


def test_phone_layout(open_page: Any, gateway: Any, tmp_path: Path) -> None:
    page = open_page(
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    sign_in(page, gateway.base_url, "kim")
    choose_model(page, "offline-fast")
    send(page, "A question asked on a small screen with a long_unbroken_word_" + "x" * 60)
    wait_finished(page)
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"page scrolls sideways by {overflow}px"
    for sel in ("#prompt", "#send", "#model-select", "#new-chat"):
        box = page.locator(sel).bounding_box()
        assert box is not None, sel
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390 + 0.5, f"{sel} off screen: {box}"
        assert box["y"] + box["height"] <= 844 + 0.5, f"{sel} off screen: {box}"
    page.screenshot(path=str(tmp_path / "phone.png"))


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_color_schemes(open_page: Any, gateway: Any, scheme: str) -> None:
    page = open_page(color_scheme=scheme)
    page.goto(gateway.base_url + "/")
    bg = page.evaluate("getComputedStyle(document.body).backgroundColor")
    nums = [int(n) for n in re.findall(r"\d+", bg)[:3]]
    brightness = sum(nums) / 3
    assert (brightness > 180) if scheme == "light" else (brightness < 80), bg


def test_screenshot_of_a_conversation(open_page: Any, gateway: Any, tmp_path: Path) -> None:
    page = open_page(viewport={"width": 1280, "height": 860}, device_scale_factor=1)
    sign_in(page, gateway.base_url, "judy")
    choose_model(page, "offline-fast")
    for question in (
        "Plan a weekend trip to the mountains",
        "Summarise the meeting notes from Monday",
    ):
        send(page, question)
        wait_stored(page, 1)
        page.click("#new-chat")
    send(page, "How do I stream tokens from the `conversation.send` method?")
    wait_stored(page, 1)
    send(page, "Write some python code that reverses the words of a sentence")
    wait_stored(page, 2)
    page.click("#regenerate")
    wait_stored(page, 2)
    expect(page.locator("#conversation-list .conversation-item")).to_have_count(3)
    page.locator("#prompt").fill("")
    page.mouse.move(1, 1)
    page.evaluate("document.activeElement && document.activeElement.blur()")
    out = tmp_path / "screenshot.png"
    page.screenshot(path=str(out))
    assert out.stat().st_size > 10_000
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        target = REPO / "docs" / "screenshot.png"
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(out, target)
