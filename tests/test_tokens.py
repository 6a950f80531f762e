"""Token counting: offline, cached per message, bounded."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.providers import tokens
from gateway.providers.base import Message

ROOT = Path(__file__).resolve().parent.parent


def test_counting_needs_no_network(tmp_path: Path) -> None:
    """With sockets refused, proxies dead and an empty tiktoken cache, counting still works."""
    script = textwrap.dedent(
        """
        import socket, sys

        def refuse(*args, **kwargs):
            raise OSError("network disabled by the test")

        socket.create_connection = refuse
        socket.getaddrinfo = refuse
        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse

        from gateway.providers import tokens
        from gateway.providers.base import Message

        print(tokens.count_text("hello world"))
        print(tokens.count_messages([Message("user", "hi")]))
        print("requests" in sys.modules)
        """
    )
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TIKTOKEN_CACHE_DIR": str(cache),
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "ALL_PROXY": "http://127.0.0.1:9",
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "9", "False"]


def test_counts_match_the_chat_format() -> None:
    """A message costs its role, its content and a fixed overhead; a prompt adds reply priming."""
    message = Message("user", "hello world")
    assert tokens.count_message(message) == tokens.MESSAGE_OVERHEAD + 1 + 2
    assert tokens.count_messages([message, message]) == tokens.REPLY_PRIMING + 2 * 7
    assert tokens.count_text("") == 0


def test_a_growing_history_only_encodes_its_new_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counting a history again after one more message encodes only that message."""
    encoded: list[str] = []
    real = tokens.count_text

    def spy(text: str) -> int:
        encoded.append(text)
        return real(text)

    monkeypatch.setattr(tokens, "count_text", spy)
    history = [Message("user", f"unique question {i} for the cache test") for i in range(30)]
    tokens.count_messages(history)
    encoded.clear()
    history.append(Message("assistant", "a brand new answer for the cache test"))
    tokens.count_messages(history)
    assert encoded == ["assistant", "a brand new answer for the cache test"]


def test_the_cache_is_bounded_and_keeps_no_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """At its size the cache forgets the least recently used counts; keys are digests, not text."""
    monkeypatch.setattr(tokens, "CACHE_SIZE", 10)
    for i in range(50):
        tokens.count_message(Message("user", f"bounded cache message {i}"))
    assert len(tokens._counts) <= 10
    assert all(isinstance(key, bytes) and len(key) == 16 for key in tokens._counts)
