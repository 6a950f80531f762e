"""Only explicitly exposed methods are reachable, whatever a frame names."""

from __future__ import annotations

import pytest

from gateway.jsonrpc import Registry
from gateway.modules.base import Module, exposed, register_module
from tests.support import gateway_server, raw_client

UNREACHABLE = [
    "chat.get_user_session",
    "chat.update_user_model",
    "chat.get_user_model",
    "chat.cleanup_old_sessions",
    "chat.session_stats",
    "chat._chat",
    "chat._finish",
    "chat.post_chat",  # the Python name of chat.postChat
    "chat.router",
    "chat.store",
    "chat.__init__",
    "chat.__class__",
    "chat.__dict__",
    "chat.__reduce__",
    "auth._check",
    "auth.__init__",
    "rpc.cancel.__call__",
    "chat",
    "",
    ".",
    "chat.",
]


@pytest.mark.parametrize("method", UNREACHABLE)
async def test_private_helpers_and_object_internals_are_method_not_found(method: str) -> None:
    """Session helpers, private names, dunders and attributes answer -32601."""
    async with gateway_server() as gw, raw_client(gw) as client:
        response = await client.call(method, [])
    assert response["error"]["code"] == -32601, response


class _Private(Module):
    namespace = "bad"

    @exposed()
    async def _secret(self) -> None:
        """Never callable."""


class _Twice(Module):
    namespace = "chat"

    @exposed("listModels")
    async def list_models(self) -> list:
        """Clashes with the chat module's method."""
        return []


class _NoNamespace(Module):
    @exposed()
    async def ping(self) -> str:
        """A module needs a namespace."""
        return "pong"


@pytest.mark.parametrize("module", [_Private(), _NoNamespace()], ids=["private", "no-namespace"])
def test_bad_registrations_fail_when_made(module: Module) -> None:
    """A private exposed method or a missing namespace is refused at start-up."""
    with pytest.raises(ValueError):
        register_module(Registry(), module)


async def test_a_duplicate_method_is_refused_at_start_up() -> None:
    """Registering a name twice raises instead of silently replacing the first."""
    async with gateway_server() as gw:
        with pytest.raises(ValueError):
            register_module(gw.registry, _Twice())
