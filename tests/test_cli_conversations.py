"""``gateway chat`` with conversations kept on the server: --conversation, /conversations,
/open, /edit, /regenerate, and plain words when no token is set."""

from __future__ import annotations

import re

from tests.conversation_support import call_ok
from tests.support import gateway_server, raw_client
from tests.test_cli import KEYS, run


async def test_chat_keeps_the_conversation_on_the_server_and_edit_branches_it() -> None:
    """Messages land in one stored conversation; /edit makes a sibling answered anew."""
    script = "/model offline-fast\nfirst question\nsecond question\n/edit second, better\n"
    async with gateway_server(api_keys=KEYS) as gw:
        code, out, err = await run("chat", url=gw.ws_url, stdin=script)
        assert code == 0, err
        async with raw_client(gw) as c:
            items = (await call_ok(c, "conversation.list"))["items"]
            assert len(items) == 1
            got = await call_ok(c, "conversation.get", {"conversationId": items[0]["id"]})
    contents = [m["content"] for m in got["messages"] if m["role"] == "user"]
    assert contents == ["first question", "second, better"]
    assert len(got["messages"][2]["siblingIds"]) == 2
    counts = [int(n) for n in re.findall(r"has (\d+) messages", out)]
    assert counts == [2, 4, 4]  # the edit is answered with the first exchange as history


async def test_chat_opens_a_conversation_by_id_and_lists_conversations() -> None:
    """--conversation continues a stored conversation; /conversations and /open work."""
    async with gateway_server(api_keys=KEYS, default_model="offline-fast") as gw:
        async with raw_client(gw) as c:
            a = (await call_ok(c, "conversation.create", {"title": "Alpha"}))["id"]
            b = (await call_ok(c, "conversation.create", {"title": "Beta"}))["id"]
            _, _, final = await c.stream(
                "conversation.send", {"conversationId": a, "message": "stored before"}
            )
            assert "result" in final
        code, out, err = await run(
            "chat",
            "--conversation",
            a,
            url=gw.ws_url,
            stdin=f"and now?\n/conversations\n/open {b}\nhello beta\n/regenerate\n",
        )
        assert code == 0, err
        assert "you> stored before" in out
        assert re.search(r"has 4 messages", out)  # the stored turn is the history
        assert f"* {a}  Alpha" in out and f"  {b}  Beta" in out
        async with raw_client(gw) as c:
            got = await call_ok(c, "conversation.get", {"conversationId": b})
    assert got["messages"][0]["content"] == "hello beta"
    assert len(got["messages"][1]["siblingIds"]) == 2  # /regenerate kept the first answer


async def test_chat_without_a_token_says_so_in_plain_words() -> None:
    """No --token and no GATEWAY_TOKEN: one readable line naming both, exit 2."""
    async with gateway_server(api_keys=KEYS) as gw:
        code, _, err = await run("chat", url=gw.ws_url, token=None, stdin="hi\n")
        assert code == 2
        assert "no token set" in err and "GATEWAY_TOKEN" in err and "--token" in err
        code, _, err = await run("call", "chat.listModels", url=gw.ws_url, token=None)
        assert code == 1
        assert "no token set" in err
        code, _, err = await run("chat", url=gw.ws_url, token="tok-nope", stdin="hi\n")
        assert code == 1 and "did not accept that token" in err
