"""Steps the browser tests share: signing in, sending, waiting for answers, reading frames."""

from __future__ import annotations

import re
import time
from typing import Any

from playwright.sync_api import Page, expect

ANSWER = ".message.assistant"
QUESTION = ".message.user"
QUESTION_TEXT = ".message.user .message-body"
ITEM = "#conversation-list .conversation-item"
LONG_MESSAGE = " ".join(f"word{i}" for i in range(40))


def sign_in(page: Page, base_url: str, user: str) -> None:
    page.goto(f"{base_url}/#token=tok-{user}")
    expect_ready(page)


def expect_ready(page: Page) -> None:
    expect_connected(page)
    expect(page.locator("#model-select option")).not_to_have_count(0)
    expect(page.locator("#model-select")).to_be_enabled()


def expect_connected(page: Page, timeout: float = 15_000) -> None:
    expect(page.locator("#status")).to_have_attribute("data-state", "connected", timeout=timeout)


def choose_model(page: Page, name: str) -> None:
    if page.locator("#model-select").input_value() == name:
        return
    before = len(calls(page, "chat.setModel"))
    page.select_option("#model-select", name)
    wait_for(lambda: len(calls(page, "chat.setModel")) > before, "setModel sent")
    # Answered when the select is usable again.
    expect(page.locator("#model-select")).to_be_enabled()
    expect(page.locator("#model-select")).to_have_value(name)


def send(page: Page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def answer(page: Page, index: int = -1) -> Any:
    answers = page.locator(ANSWER)
    return answers.last if index == -1 else answers.nth(index)


def wait_finished(page: Page, index: int = -1, timeout: float = 20_000) -> Any:
    loc = answer(page, index)
    expect(loc).to_have_attribute("data-finish", re.compile(r".+"), timeout=timeout)
    return loc


def wait_stored(page: Page, count: int, timeout: float = 20_000) -> None:
    """Wait until ``count`` answers are shown as the gateway stored them (with their ids)."""
    expect(page.locator(f"{ANSWER}[data-id][data-finish]")).to_have_count(count, timeout=timeout)
    expect(page.locator("#send")).to_be_visible()


def ask(page: Page, text: str, count: int) -> Any:
    """Send ``text`` and wait until it is the ``count``-th stored answer; return that answer."""
    send(page, text)
    wait_stored(page, count)
    return answer(page)


def body_text(loc: Any) -> str:
    return str(loc.locator(".message-body").inner_text())


def wait_for(predicate: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {what}")


def calls(page: Page, method: str) -> list[dict[str, Any]]:
    return page.ws_log.calls(method)  # type: ignore[attr-defined, no-any-return]


def message_count(text: str) -> int:
    """How many messages the offline model says it was given."""
    found = re.findall(r"has (\d+) messages", text)
    assert found, text
    return int(found[0])


def open_actions(page: Page, title: str) -> Any:
    item = page.locator(ITEM, has_text=title)
    item.locator(".conversation-menu").click()
    return item
