"""This process's node id: names the process in log lines, metrics and shared state.

``GATEWAY_NODE_ID`` wins (a supervisor sets it per worker, e.g. ``myhost-w1``);
otherwise ``<hostname>-<pid>``, unique among the processes sharing one Redis.
"""

from __future__ import annotations

import os
import socket

__all__ = ["node_id"]

_node_id: str | None = None


def node_id() -> str:
    """The node id, resolved once per process (after a fork, set ``GATEWAY_NODE_ID`` first)."""
    global _node_id
    if _node_id is None:
        _node_id = os.environ.get("GATEWAY_NODE_ID") or f"{socket.gethostname()}-{os.getpid()}"
    return _node_id
