"""The conversation sidebar, versions and settings, in Chromium against a real gateway.

Conversations live on the gateway (SQLite in the test's data directory), so what one
page does, a reload, another tab or another browser sees. Each test signs in as its own
user. The offline model answers ``You said: "<question>". This conversation has N messages
... My instructions: "<system prompt>"``, which lets a test read what the model was given.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect

from tests.browser.conftest import instrument
from tests.browser.helpers import (
    ANSWER,
    ITEM,
    LONG_MESSAGE,
    QUESTION,
    QUESTION_TEXT,
    answer,
    ask,
    body_text,
    calls,
    choose_model,
    expect_ready,
    message_count,
    open_actions,
    send,
    sign_in,
    wait_for,
    wait_stored,
)


def start(page: Page, gateway: Any, user: str) -> None:
    sign_in(page, gateway.base_url, user)
    choose_model(page, "offline-fast")


def address(page: Page) -> str:
    """The page's own idea of its address (Playwright's ``page.url`` may lag behind
    ``history.replaceState``)."""
    return str(page.evaluate("location.href"))


def conversation_id(page: Page) -> str:
    found = re.search(r"#c=([^&]+)", address(page))
    assert found, address(page)
    return found.group(1)


def test_sidebar_lists_conversations_and_a_reload_keeps_the_open_one(
    page: Page, gateway: Any
) -> None:
    start(page, gateway, "user00")
    expect(page.locator("#conversation-empty")).to_be_visible()
    ask(page, "apples grow on trees", 1)
    first = conversation_id(page)
    # Titled after the first answer, listed at once.
    expect(page.locator(ITEM)).to_have_count(1)
    expect(page.locator(ITEM).first).to_contain_text("Apples grow on trees")
    expect(page.locator("#conversation-title")).to_have_text("Apples grow on trees")

    page.click("#new-chat")
    ask(page, "bananas are yellow", 1)
    second = conversation_id(page)
    assert second != first
    # Newest first; the open one is marked.
    expect(page.locator(ITEM)).to_have_count(2)
    expect(page.locator(ITEM).first).to_contain_text("Bananas are yellow")
    expect(page.locator(f"{ITEM}.current")).to_contain_text("Bananas are yellow")

    page.reload()
    expect_ready(page)
    assert conversation_id(page) == second
    expect(page.locator(QUESTION_TEXT)).to_have_text("bananas are yellow")
    expect(page.locator(f"{ANSWER}[data-id]")).to_have_count(1)
    assert 'You said: "bananas are yellow"' in body_text(answer(page))

    page.locator(ITEM, has_text="Apples").locator(".conversation-open").click()
    expect(page.locator(QUESTION_TEXT)).to_have_text("apples grow on trees")
    wait_for(lambda: conversation_id(page) == first, "the address names the open conversation")
    # And the next question continues that conversation, with its history.
    done = ask(page, "and pears?", 2)
    assert message_count(body_text(done)) == message_count(body_text(answer(page, 0))) + 2
    assert calls(page, "conversation.send")[-1]["params"]["conversationId"] == first


def test_another_tab_and_another_browser_see_the_same_conversations(
    context_factory: Any, gateway: Any
) -> None:
    ctx = context_factory()
    page = instrument(ctx.new_page())
    start(page, gateway, "user01")
    ask(page, "shared between tabs", 1)
    # A second tab of the same browser: signed in, lists it, opens it.
    tab = instrument(ctx.new_page())
    tab.goto(gateway.base_url + "/")
    expect_ready(tab)
    expect(tab.locator(ITEM)).to_have_count(1)
    tab.locator(ITEM).first.locator(".conversation-open").click()
    expect(tab.locator(QUESTION_TEXT)).to_have_text("shared between tabs")
    # It adds a turn; the first tab shows it when it comes back into view.
    done = ask(tab, "written in the second tab", 2)
    page.bring_to_front()
    page.evaluate("window.dispatchEvent(new Event('focus'))")
    expect(page.locator(QUESTION)).to_have_count(2)
    expect(page.locator(QUESTION_TEXT).last).to_have_text("written in the second tab")
    assert body_text(answer(page)) == body_text(done)
    # Another browser (no shared storage) signed in as the same user sees it too.
    other = instrument(context_factory().new_page())
    sign_in(other, gateway.base_url, "user01")
    expect(other.locator(ITEM)).to_have_count(1)
    expect(other.locator(ITEM)).to_contain_text("Shared between tabs")
    for pg in (page, tab, other):
        assert not pg.page_errors  # type: ignore[attr-defined]


def test_search_finds_titles_and_message_text(page: Page, gateway: Any) -> None:
    start(page, gateway, "user02")
    ask(page, "a question about volcanoes", 1)
    page.click("#new-chat")
    ask(page, "a question about glaciers", 1)
    ask(page, "and something about penguins", 2)
    expect(page.locator(ITEM)).to_have_count(2)

    page.fill("#conversation-search", "volcano")
    expect(page.locator(ITEM)).to_have_count(1)
    expect(page.locator(ITEM)).to_contain_text("question about volcanoes")
    # Text that is not in any title, only in a later message.
    page.fill("#conversation-search", "penguins")
    expect(page.locator(ITEM)).to_have_count(1)
    expect(page.locator(ITEM)).to_contain_text("question about glaciers")
    page.fill("#conversation-search", "no such thing anywhere")
    expect(page.locator(ITEM)).to_have_count(0)
    expect(page.locator("#conversation-empty")).to_have_text("No conversation matches.")
    queries = [c["params"].get("query") for c in calls(page, "conversation.list")]
    assert "penguins" in queries
    page.press("#conversation-search", "Escape")
    expect(page.locator(ITEM)).to_have_count(2)


def test_rename_and_pin_stay_after_a_reload(page: Page, gateway: Any) -> None:
    start(page, gateway, "user03")
    ask(page, "older conversation here", 1)
    page.click("#new-chat")
    ask(page, "newer conversation here", 1)

    item = open_actions(page, "Older conversation")
    item.locator("[data-testid=rename]").click()
    rename = item.locator("[data-testid=rename-input]")
    expect(rename).to_be_focused()
    rename.fill("My renamed one")
    rename.press("Enter")
    expect(page.locator(ITEM, has_text="My renamed one")).to_have_count(1)
    # Renaming counts as the latest activity; pinning puts one first whatever its age.
    expect(page.locator(ITEM).first).to_contain_text("My renamed one")
    open_actions(page, "Newer conversation").locator("[data-testid=pin]").click()
    expect(page.locator(ITEM).first).to_contain_text("Newer conversation")
    expect(page.locator(ITEM).first).to_have_class(re.compile("pinned"))

    page.reload()
    expect_ready(page)
    expect(page.locator(ITEM).first).to_contain_text("Newer conversation")
    expect(page.locator(ITEM).nth(1)).to_contain_text("My renamed one")
    page.locator(ITEM, has_text="My renamed one").locator(".conversation-open").click()
    expect(page.locator("#conversation-title")).to_have_text("My renamed one")
    renames = calls(page, "conversation.rename")
    assert renames == [] or renames[-1]["params"]["title"] == "My renamed one"


def test_delete_asks_first_and_removes_it_everywhere(
    page: Page, gateway: Any, open_page: Any
) -> None:
    start(page, gateway, "user04")
    ask(page, "keep this conversation", 1)
    page.click("#new-chat")
    ask(page, "throw this one away", 1)
    doomed = conversation_id(page)

    item = open_actions(page, "Throw this")
    item.locator("[data-testid=delete]").click()
    dialog = page.locator("#confirm-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Throw this one away")
    page.keyboard.press("Escape")  # no
    expect(dialog).to_be_hidden()
    expect(page.locator(ITEM)).to_have_count(2)
    assert calls(page, "conversation.delete") == []

    # Focus is back on Delete, the actions still open.
    expect(item.locator("[data-testid=delete]")).to_be_focused()
    page.keyboard.press("Enter")
    expect(dialog).to_be_visible()
    # Said no and asked again before the dialog's close event came (input goes ahead of
    # that task, as a quick Esc then Enter showed in CI): the new question gets its answer.
    page.evaluate(
        """() => {
            document.getElementById("confirm-dialog").close("cancel");
            document.querySelector("[data-testid=delete]").click();
        }"""
    )
    expect(dialog).to_be_visible()
    assert calls(page, "conversation.delete") == []
    page.click("[data-testid=confirm-ok]")
    expect(page.locator(ITEM)).to_have_count(1)
    expect(page.locator(ITEM)).to_contain_text("Keep this")
    # It was open: the page starts a new chat.
    expect(page.locator(".message")).to_have_count(0)
    assert "#c=" not in address(page)
    # Gone on the gateway: another browser lists only the other one, and the old link fails.
    other = open_page()
    sign_in(other, gateway.base_url, "user04")
    expect(other.locator(ITEM)).to_have_count(1)
    other.goto(f"{gateway.base_url}/#c={doomed}")
    expect(other.locator(".toast")).to_contain_text("not found")
    other.reload()  # the page dropped the dead link
    expect_ready(other)
    assert doomed not in address(other)


def test_editing_a_question_makes_a_branch_with_a_pager(page: Page, gateway: Any) -> None:
    start(page, gateway, "user05")
    alone = message_count(body_text(ask(page, "first question", 1)))
    ask(page, "second question", 2)
    expect(page.locator("[data-testid=pager]")).to_have_count(0)

    first = page.locator(QUESTION).first
    first.hover()
    first.locator("[data-testid=edit]").click()
    box = first.locator("[data-testid=edit-input]")
    expect(box).to_be_focused()
    expect(box).to_have_value("first question")
    box.fill("first question, edited")
    box.press("Enter")
    # The edited question starts a new branch: the later turns belong to the old one.
    wait_stored(page, 1)
    expect(page.locator(QUESTION)).to_have_count(1)
    expect(page.locator(QUESTION)).to_contain_text("first question, edited")
    done = answer(page)
    assert 'You said: "first question, edited"' in body_text(done)
    assert message_count(body_text(done)) == alone  # the later turns are not its history
    edits = calls(page, "conversation.edit")
    assert len(edits) == 1 and edits[0]["params"]["message"] == "first question, edited"
    pager = page.locator(QUESTION).first.locator("[data-testid=pager]")
    expect(pager.locator(".pager-pos")).to_have_text("2/2")

    # Back to the first version: the old branch with both turns comes back.
    pager.get_by_role("button", name="Previous version of this question").click()
    expect(page.locator(QUESTION)).to_have_count(2)
    expect(page.locator(QUESTION).first.locator(".message-body")).to_have_text("first question")
    expect(page.locator(QUESTION).first.locator(".pager-pos")).to_have_text("1/2")
    expect(page.locator(QUESTION).last).to_contain_text("second question")

    # The chosen branch is what the gateway keeps: a reload shows it, and the next answer
    # is given the old branch's history.
    page.reload()
    expect_ready(page)
    expect(page.locator(QUESTION)).to_have_count(2)
    done = ask(page, "third question", 3)
    assert message_count(body_text(done)) == message_count(body_text(answer(page, 1))) + 2

    page.locator(QUESTION).first.get_by_role("button", name="Next version of this question").click()
    expect(page.locator(QUESTION)).to_have_count(1)
    expect(page.locator(QUESTION).first).to_contain_text("first question, edited")


def test_regenerate_keeps_the_old_answer_reachable(page: Page, gateway: Any) -> None:
    sign_in(page, gateway.base_url, "user06")  # the paced model, to stop it half way
    send(page, LONG_MESSAGE)
    wait_for(lambda: len(body_text(answer(page))) > 40, "some text streamed")
    page.click("#stop")
    wait_stored(page, 1)
    stopped = answer(page)
    expect(stopped).to_have_attribute("data-finish", "cancelled")
    partial = body_text(stopped)

    page.click("#regenerate")
    wait_stored(page, 1, timeout=40_000)
    full = answer(page)
    expect(full).to_have_attribute("data-finish", "stop")
    whole = body_text(full)
    assert whole.startswith(partial.rstrip()) and len(whole) > len(partial)
    expect(page.locator(ANSWER)).to_have_count(1)
    expect(full.locator(".pager-pos")).to_have_text("2/2")

    full.get_by_role("button", name="Previous version of this answer").click()
    old = answer(page)
    expect(old.locator(".pager-pos")).to_have_text("1/2")
    expect(old).to_have_attribute("data-finish", "cancelled")
    expect(old.locator(".finish")).to_have_text("Stopped")
    assert body_text(old) == partial
    old.get_by_role("button", name="Next version of this answer").click()
    expect(answer(page).locator(".pager-pos")).to_have_text("2/2")
    assert body_text(answer(page)) == whole


def test_settings_apply_to_the_next_answer(page: Page, gateway: Any) -> None:
    start(page, gateway, "user07")
    before = ask(page, "what are your instructions", 1)
    assert "Answer like a pirate" not in body_text(before)

    page.click("#settings-open")
    dialog = page.locator("#settings-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#settings-system")).to_be_focused()
    page.fill("#settings-system", "Answer like a pirate.")
    page.fill("#settings-temperature", "0.4")
    page.fill("#settings-max-tokens", "12")
    page.click("[data-testid=settings-save]")
    expect(dialog).to_be_hidden()
    update = calls(page, "conversation.update")[-1]["params"]
    assert update["systemPrompt"] == "Answer like a pirate."
    assert update["params"] == {"temperature": 0.4, "maxTokens": 12}

    # Max tokens cuts the next answer short, and the model got the new instructions.
    page.click("#settings-open")
    expect(page.locator("#settings-max-tokens")).to_have_value("12")
    page.fill("#settings-max-tokens", "")
    page.click("[data-testid=settings-save]")
    expect(dialog).to_be_hidden()  # saved
    done = ask(page, "what are your instructions now", 2)
    assert 'My instructions: "Answer like a pirate."' in body_text(done)
    assert calls(page, "conversation.update")[-1]["params"]["params"] == {"temperature": 0.4}

    page.click("#settings-open")
    page.fill("#settings-max-tokens", "5")
    page.click("[data-testid=settings-save]")
    expect(dialog).to_be_hidden()
    short = ask(page, "one more", 3)
    expect(short).to_have_attribute("data-finish", "length")
    expect(short.locator(".finish")).to_contain_text("length limit")
    assert len(body_text(short).split()) == 5

    # Kept by the gateway: after a reload the dialog shows them again.
    page.reload()
    expect_ready(page)
    page.click("#settings-open")
    expect(page.locator("#settings-system")).to_have_value("Answer like a pirate.")
    expect(page.locator("#settings-temperature")).to_have_value("0.4")
    expect(page.locator("#settings-max-tokens")).to_have_value("5")
    page.keyboard.press("Escape")
    expect(page.locator("#settings-dialog")).to_be_hidden()


def test_settings_before_the_first_message_go_into_the_new_conversation(
    page: Page, gateway: Any
) -> None:
    start(page, gateway, "user08")
    page.click("#settings-open")
    expect(page.locator("#settings-scope")).to_contain_text("next new conversation")
    expect(page.locator("[data-testid=export-json]")).to_be_disabled()
    page.fill("#settings-system", "Be brief.")
    page.click("[data-testid=settings-save]")
    expect(page.locator("#settings-dialog")).to_be_hidden()
    done = ask(page, "hello", 1)
    assert 'My instructions: "Be brief."' in body_text(done)
    created = calls(page, "conversation.create")[-1]["params"]
    assert created["systemPrompt"] == "Be brief." and created["model"] == "offline-fast"


def test_export_downloads_json_and_markdown(page: Page, gateway: Any, tmp_path: Path) -> None:
    start(page, gateway, "user09")
    ask(page, "export me please", 1)
    page.click("#settings-open")
    with page.expect_download() as got:
        page.click("[data-testid=export-json]")
    path = tmp_path / "c.json"
    got.value.save_as(path)
    doc = json.loads(path.read_text())
    assert [m["role"] for m in doc["messages"]] == ["user", "assistant"]
    assert doc["messages"][0]["content"] == "export me please"
    assert got.value.suggested_filename.endswith(".json")
    with page.expect_download() as got:
        page.click("[data-testid=export-markdown]")
    path = tmp_path / "c.md"
    got.value.save_as(path)
    text = path.read_text()
    assert "export me please" in text and 'You said: "export me please"' in text
    assert got.value.suggested_filename.endswith(".md")


def test_phone_drawer(open_page: Any, gateway: Any, tmp_path: Path) -> None:
    page = open_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    start(page, gateway, "user10")
    ask(page, "asked on the phone", 1)
    page.click("#new-chat")
    ask(page, "second on the phone", 1)
    sidebar = page.locator("#sidebar")
    # Closed: the sidebar is off screen and the chat has the whole width.
    expect(page.locator("#sidebar-toggle")).to_be_visible()
    expect(page.locator("#sidebar-toggle")).to_have_attribute("aria-expanded", "false")
    box = sidebar.bounding_box()
    assert box is not None and box["x"] + box["width"] <= 0
    chat = page.locator("#chat-view").bounding_box()
    assert chat is not None and chat["width"] >= 389

    page.click("#sidebar-toggle")
    expect(page.locator("#sidebar-toggle")).to_have_attribute("aria-expanded", "true")
    wait_for(lambda: (sidebar.bounding_box() or {"x": -1})["x"] >= 0, "drawer open")
    page.screenshot(path=str(tmp_path / "drawer.png"))
    page.locator(ITEM, has_text="Asked on the phone").locator(".conversation-open").click()
    # Choosing closes the drawer and opens the conversation.
    expect(page.locator(QUESTION_TEXT)).to_have_text("asked on the phone")
    expect(page.locator("#sidebar-toggle")).to_have_attribute("aria-expanded", "false")
    expect(page.locator("#sidebar-backdrop")).to_be_hidden()
    # Esc closes it too.
    page.click("#sidebar-toggle")
    expect(page.locator("#conversation-search")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#sidebar-toggle")).to_have_attribute("aria-expanded", "false")
    # ... also when the focus is no longer inside the drawer (a refresh that
    # re-renders the list drops the focused item, leaving the body focused).
    page.click("#sidebar-toggle")
    expect(page.locator("#sidebar-toggle")).to_have_attribute("aria-expanded", "true")
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("Escape")
    expect(page.locator("#sidebar-toggle")).to_have_attribute("aria-expanded", "false")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0


def test_an_answer_left_for_another_conversation_finishes_on_the_gateway(
    page: Page, gateway: Any
) -> None:
    start(page, gateway, "user11")
    ask(page, "the other conversation", 1)
    page.click("#new-chat")
    choose_model(page, "offline")  # paced, so it is still writing when we leave
    send(page, LONG_MESSAGE)
    wait_for(lambda: len(body_text(answer(page))) > 20, "the answer started")
    page.locator(ITEM, has_text="The other conversation").locator(".conversation-open").click()
    expect(page.locator(QUESTION_TEXT)).to_have_text("the other conversation")
    expect(page.locator("#send")).to_be_visible()  # this conversation is not busy
    assert calls(page, "rpc.cancel") == []
    # Back in the first one, the answer is (or becomes) whole, as the gateway stored it.
    page.locator(ITEM, has_text="Word0").locator(".conversation-open").click()
    expect(page.locator(QUESTION_TEXT)).to_have_text(LONG_MESSAGE)
    done = page.locator(f"{ANSWER}[data-finish=stop]")
    expect(done).to_have_count(1, timeout=30_000)
    assert 'You said: "word0' in body_text(done)
    assert "word39" in body_text(done)


def test_a_conversation_busy_in_another_tab_is_said_in_words(
    context_factory: Any, gateway: Any
) -> None:
    ctx = context_factory()
    page = instrument(ctx.new_page())
    sign_in(page, gateway.base_url, "user12")  # the paced model
    send(page, LONG_MESSAGE)
    wait_for(lambda: len(body_text(answer(page))) > 0, "the answer started")
    tab = instrument(ctx.new_page())
    tab.goto(address(page))  # the same conversation (#c=...)
    expect_ready(tab)
    expect(tab.locator(QUESTION_TEXT)).to_have_text(LONG_MESSAGE)
    send(tab, "me too")
    error = answer(tab).locator(".error")
    expect(error).to_contain_text("still being written")
    # The first tab's answer is not disturbed.
    expect(answer(page)).to_have_attribute("data-finish", "stop", timeout=30_000)
    assert "word39" in body_text(answer(page))


def test_the_model_picker_follows_the_open_conversation(page: Page, gateway: Any) -> None:
    start(page, gateway, "user13")
    first = ask(page, "which model are you", 1)
    assert "I am offline-fast" in body_text(first)
    fast = conversation_id(page)
    page.click("#new-chat")
    choose_model(page, "offline")
    slow = ask(page, "and which are you", 1)
    assert "I am offline." in body_text(slow)
    # Back in the first conversation, the picker shows its model, and answers use it.
    page.locator(ITEM, has_text="Which model are you").locator(".conversation-open").click()
    wait_for(lambda: conversation_id(page) == fast, "first conversation open")
    expect(page.locator("#model-select")).to_have_value("offline-fast")
    assert "I am offline-fast" in body_text(ask(page, "still you?", 2))
    # Choosing another model changes the open conversation's model.
    choose_model(page, "offline")
    wait_for(lambda: calls(page, "conversation.update") != [], "conversation.update sent")
    assert calls(page, "conversation.update")[-1]["params"] == {
        "conversationId": fast,
        "model": "offline",
    }
    assert "I am offline." in body_text(ask(page, "and now?", 3))
