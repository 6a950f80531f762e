"""Authentication over real sockets: header and first-frame login, expiry, refresh, limits."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import sys
import time
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.auth.tokens import mint_token
from gateway.config import ConfigError, load_config
from gateway.server.app import Gateway
from tests.support import RawClient, gateway_server, raw_client, until_closed

TIMEOUT = 10.0
SECRET = "test-secret-long-enough-for-hs256-0123456789"
OTHER_SECRET = "another-secret-long-enough-for-hs256-012345"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def server(**overrides: Any) -> Any:
    """A test gateway signing with a key long enough for HS256 (no PyJWT warnings)."""
    overrides.setdefault("jwt_secret", SECRET)
    return gateway_server(**overrides)


def jwt(user: str = "carol", *, secret: str = SECRET, **kwargs: Any) -> str:
    return mint_token(secret, user, **kwargs)


def expired_jwt(user: str = "carol") -> str:
    return jwt(user, ttl=60, now=time.time() - 3600)


async def login(client: RawClient, token: Any) -> dict[str, Any]:
    return await client.call("auth.login", {"token": token})


async def refused_handshake(
    gw: Gateway, token: str | None = None, *, headers: dict[str, str] | None = None
) -> Any:
    """Open a socket that must be refused; returns the HTTP response."""
    if token is not None:
        headers = {"Authorization": f"Bearer {token}"}
    with pytest.raises(InvalidStatus) as info:
        async with asyncio.timeout(TIMEOUT):
            ws = await connect(gw.ws_url, additional_headers=headers)
        await ws.close()
    return info.value.response


# Logging in


async def test_header_token_authenticates_the_connection() -> None:
    """A static key in ``Authorization: Bearer`` logs the socket in; it never expires."""
    async with server() as gw, raw_client(gw, "tok-alice") as client:
        response = await client.call("auth.whoami")
    assert response["result"] == {
        "user": {"id": "alice", "name": "alice", "roles": []},
        "expiresAt": None,
    }


async def test_header_jwt_authenticates_with_its_expiry_and_roles() -> None:
    """A signed token in the header gives its subject, name, roles and expiry."""
    token = jwt("carol", ttl=600, roles=("admin",), name="Carol")
    async with server() as gw, raw_client(gw, token) as client:
        result = (await client.call("auth.whoami"))["result"]
    assert result["user"] == {"id": "carol", "name": "Carol", "roles": ["admin"]}
    assert time.time() + 590 < result["expiresAt"] <= time.time() + 601


async def test_first_frame_login_authenticates_the_connection() -> None:
    """auth.login as the first frame answers {user, expiresAt}; chat methods then work."""
    async with server() as gw, raw_client(gw, token=None) as client:
        response = await login(client, "tok-bob")
        assert response == {
            "jsonrpc": "2.0",
            "result": {"user": {"id": "bob", "name": "bob", "roles": []}, "expiresAt": None},
            "id": response["id"],
        }
        assert (await client.call("chat.getCurrentModel"))["result"]["name"] == "offline"


async def test_first_frame_login_with_a_jwt_gives_its_expiry() -> None:
    """auth.login with a signed token answers its expiry in unix seconds."""
    token = jwt("dave", ttl=120)
    async with server() as gw, raw_client(gw, token=None) as client:
        result = (await login(client, token))["result"]
    assert result["user"]["id"] == "dave"
    assert isinstance(result["expiresAt"], int | float)
    assert time.time() + 110 < result["expiresAt"] <= time.time() + 121


@pytest.mark.parametrize(
    "method", ["chat.listModels", "chat.setModel", "auth.whoami", "auth.refresh", "chat.postChat"]
)
async def test_calls_before_login_are_unauthenticated(method: str) -> None:
    """Before auth, any method but auth.login/rpc.discover is -32001 and the socket stays open."""
    async with server() as gw, raw_client(gw, token=None) as client:
        response = await client.call(method, ["x"] if method == "chat.setModel" else None)
        assert response["error"]["code"] == -32001
        assert (await client.call("rpc.discover"))["result"]["openrpc"]
        assert (await login(client, "tok-alice"))["result"]["user"]["id"] == "alice"
        assert (await client.call("chat.listModels"))["result"]


async def test_no_login_within_auth_timeout_closes_with_4502() -> None:
    """A socket that never logs in is closed with 4502 after ``auth_timeout``."""
    async with server(auth_timeout=0.3) as gw, raw_client(gw, token=None) as client:
        assert (await client.call("chat.listModels"))["error"]["code"] == -32001
        started = time.monotonic()
        _, code = await until_closed(client)
    assert code == 4502
    assert time.monotonic() - started < 2


async def test_login_within_auth_timeout_keeps_the_connection() -> None:
    """The auth deadline does not touch a socket that logged in in time."""
    async with server(auth_timeout=0.3) as gw, raw_client(gw, token=None) as client:
        await login(client, "tok-alice")
        await asyncio.sleep(0.5)
        assert (await client.call("auth.whoami"))["result"]["user"]["id"] == "alice"


# Bad tokens


BAD_TOKENS = {
    "unknown key": ("tok-nobody", -32001),
    "forged jwt": (jwt("alice", secret=OTHER_SECRET), -32001),
    "wrong issuer": (jwt("alice", issuer="someone-else"), -32001),
    "malformed jwt": ("a.b.c", -32001),
    "empty": ("", -32001),
    "expired jwt": (expired_jwt("alice"), -32002),
}


@pytest.mark.parametrize(
    ("token", "code"),
    [v for k, v in BAD_TOKENS.items() if k != "empty"],
    ids=[k for k in BAD_TOKENS if k != "empty"],
)
async def test_bad_header_token_is_refused_with_http_401(token: str, code: int) -> None:
    """Unknown, forged, malformed or expired header tokens fail the handshake with 401."""
    async with server() as gw:
        response = await refused_handshake(gw, token)
        assert response.status_code == 401
        assert json.loads(response.body)["error"]["code"] == code
        assert token.encode() not in response.body
        async with raw_client(gw, "tok-bob") as other:
            assert (await other.call("auth.whoami"))["result"]["user"]["id"] == "bob"


@pytest.mark.parametrize(
    "header",
    ["Bearer ", "Bearer", "Basic dGFsaWNlOnRvay1hbGljZQ==", "tok-alice", "Token tok-alice"],
)
async def test_malformed_authorization_header_is_refused_with_http_401(header: str) -> None:
    """An empty bearer token or another scheme fails the handshake with 401."""
    async with server() as gw:
        response = await refused_handshake(gw, headers={"Authorization": header})
        assert response.status_code == 401


async def test_bearer_scheme_is_case_insensitive() -> None:
    """``authorization: bearer <token>`` works like ``Bearer``."""
    async with server() as gw:
        async with asyncio.timeout(TIMEOUT):
            ws = await connect(gw.ws_url, additional_headers={"authorization": "bearer tok-bob"})
        try:
            response = await RawClient(ws).call("auth.whoami")
        finally:
            await ws.close()
    assert response["result"]["user"]["id"] == "bob"


@pytest.mark.parametrize(("token", "code"), BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
async def test_bad_frame_token_gets_an_error_then_a_close(token: str, code: int) -> None:
    """auth.login with a bad token: -32001 then close 4500, or -32002 then 4501 if expired."""
    async with server() as gw, raw_client(gw, token=None) as client:
        response = await login(client, token)
        assert response["error"]["code"] == code
        _, close_code = await until_closed(client)
    assert close_code == (4501 if code == -32002 else 4500)


@pytest.mark.parametrize("token", [123, None, ["tok-alice"], {"token": "tok-alice"}])
async def test_login_with_a_token_that_is_not_a_string_is_refused(token: Any) -> None:
    """A token that is not a string is -32602: no login, and the socket may try again."""
    async with server() as gw, raw_client(gw, token=None) as client:
        assert (await login(client, token))["error"]["code"] == -32602
        assert (await client.call("auth.whoami"))["error"]["code"] == -32001
        assert (await login(client, "tok-alice"))["result"]["user"]["id"] == "alice"


# Refresh and expiry


async def test_refresh_to_a_new_token_of_the_same_user_extends_the_session() -> None:
    """auth.refresh with a later token of the same user swaps the expiry."""
    async with server() as gw, raw_client(gw, jwt("dave", ttl=60)) as client:
        before = (await client.call("auth.whoami"))["result"]["expiresAt"]
        response = await client.call("auth.refresh", {"token": jwt("dave", ttl=7200)})
        after = response["result"]["expiresAt"]
        assert response["result"]["user"]["id"] == "dave"
        assert after > before + 3600
        assert (await client.call("auth.whoami"))["result"]["expiresAt"] == after


async def test_refresh_to_another_user_is_forbidden() -> None:
    """auth.refresh with another user's token is -32003; the socket keeps its user."""
    async with server() as gw, raw_client(gw, jwt("dave")) as client:
        response = await client.call("auth.refresh", {"token": "tok-alice"})
        assert response["error"]["code"] == -32003
        assert (await client.call("auth.whoami"))["result"]["user"]["id"] == "dave"


async def test_login_on_a_logged_in_socket_is_a_refresh() -> None:
    """auth.login on an authenticated socket swaps the token of that user, never the user."""
    async with server() as gw, raw_client(gw, jwt("dave", ttl=60)) as client:
        response = await login(client, jwt("dave", ttl=7200))
        assert response["result"]["expiresAt"] > time.time() + 3600
        assert (await login(client, "tok-alice"))["error"]["code"] == -32003
        assert (await client.call("auth.whoami"))["result"]["user"]["id"] == "dave"


async def test_refresh_with_a_bad_token_closes_with_4500() -> None:
    """auth.refresh with a forged token is -32001 and closes the socket with 4500."""
    forged = jwt("dave", secret=OTHER_SECRET)
    async with server() as gw, raw_client(gw, jwt("dave")) as client:
        assert (await client.call("auth.refresh", [forged]))["error"]["code"] == -32001
        _, code = await until_closed(client)
    assert code == 4500


async def test_token_expiring_mid_session_gets_32002_then_4501() -> None:
    """After the token's expiry the next call is -32002 and the socket closes with 4501."""
    async with server() as gw, raw_client(gw, jwt("erin", ttl=2)) as client:
        # exp is whole seconds: ttl=2 leaves 1-2 s, never a token already expired at connect.
        expires_at = (await client.call("auth.whoami"))["result"]["expiresAt"]
        await asyncio.sleep(max(0.0, expires_at - time.time()) + 0.05)
        response = await client.call("chat.getCurrentModel")
        assert response["error"]["code"] == -32002
        _, code = await until_closed(client)
    assert code == 4501


# Configuration


def test_gateway_api_keys_split_at_the_first_colon() -> None:
    """GATEWAY_API_KEYS holds user:token pairs; a token may itself contain colons."""
    config = load_config(
        env={"GATEWAY_API_KEYS": "alice:tok-a, bob:tok:with:colons ,carol:c=1"},
    )
    assert dict(config.auth.api_keys) == {
        "tok-a": "alice",
        "tok:with:colons": "bob",
        "c=1": "carol",
    }


@pytest.mark.parametrize("value", ["nocolon", ":tok", "user:", "alice:tok-a,bob"])
def test_malformed_gateway_api_keys_are_a_config_error(value: str) -> None:
    """A pair without a user, a token or a colon is refused at start-up."""
    with pytest.raises(ConfigError):
        load_config(env={"GATEWAY_API_KEYS": value})


def test_gateway_admins_and_jwt_secret_come_from_the_environment() -> None:
    """GATEWAY_ADMINS (comma separated) and GATEWAY_JWT_SECRET are read from the environment."""
    config = load_config(
        env={"GATEWAY_ADMINS": " alice, ,carol ", "GATEWAY_JWT_SECRET": "s3cret"},
    )
    assert config.auth.admins == frozenset({"alice", "carol"})
    assert config.auth.jwt_secret == "s3cret"


async def test_environment_keys_and_admins_authenticate_over_a_socket() -> None:
    """Keys from the environment log users in; admins from the environment get the admin role."""
    config = load_config(
        env={"GATEWAY_API_KEYS": "alice:tok-a,bob:tok:with:colons", "GATEWAY_ADMINS": "alice"}
    )
    async with server(config=config) as gw:
        async with raw_client(gw, "tok:with:colons") as bob:
            result = (await bob.call("auth.whoami"))["result"]
            assert result["user"] == {"id": "bob", "name": "bob", "roles": []}
        async with raw_client(gw, token=None) as alice:
            result = (await login(alice, "tok-a"))["result"]
            assert result["user"]["roles"] == ["admin"]
        response = await refused_handshake(gw, "tok")
        assert response.status_code == 401


async def test_admins_get_the_admin_role_for_jwt_logins_too() -> None:
    """A user listed as admin holds the role whatever roles its signed token carries."""
    async with (
        server(admins={"frank"}) as gw,
        raw_client(gw, jwt("frank")) as client,
    ):
        assert (await client.call("auth.whoami"))["result"]["user"]["roles"] == ["admin"]


# Limits


async def test_connections_over_the_per_user_limit_are_refused_with_4503() -> None:
    """Beyond ``connections_per_user``, auth.login is -32004 then close 4503; others unaffected."""
    async with server(connections_per_user=2) as gw:
        async with raw_client(gw, "tok-alice") as first, raw_client(gw, token=None) as second:
            assert (await login(second, "tok-alice"))["result"]["user"]["id"] == "alice"
            async with raw_client(gw, token=None) as third:
                response = await login(third, "tok-alice")
                assert response["error"]["code"] == -32004
                assert response["error"]["data"]["limit"] == "connectionsPerUser"
                _, code = await until_closed(third)
                assert code == 4503
            async with raw_client(gw, "tok-alice") as by_header:
                _, code = await until_closed(by_header)
                assert code == 4503
            async with raw_client(gw, "tok-bob") as bob:
                assert (await bob.call("auth.whoami"))["result"]["user"]["id"] == "bob"
            assert (await first.call("auth.whoami"))["result"]["user"]["id"] == "alice"


async def test_closing_a_connection_frees_its_place_under_the_per_user_limit() -> None:
    """Once a user's socket closes, the user may open another one."""
    async with server(connections_per_user=1) as gw:
        async with raw_client(gw, "tok-alice") as first:
            await first.call("auth.whoami")
        async with asyncio.timeout(TIMEOUT):
            while gw.user_connections.get("alice"):
                await asyncio.sleep(0.01)
        async with raw_client(gw, token=None) as again:
            assert (await login(again, "tok-alice"))["result"]["user"]["id"] == "alice"


# The token command


async def test_gateway_token_command_mints_a_token_the_gateway_accepts() -> None:
    """`gateway token --user u --ttl 1h --role admin` prints a token signed with the secret."""
    secret = secrets.token_urlsafe(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_JWT_SECRET"] = secret
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "gateway", "token", "--user", "u", "--ttl", "1h", "--role", "admin"),
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(TIMEOUT):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    token = out.decode().strip()
    assert token.count(".") == 2
    assert secret not in out.decode()
    async with server(jwt_secret=secret) as gw, raw_client(gw, token=None) as client:
        result = (await login(client, token))["result"]
    assert result["user"] == {"id": "u", "name": "u", "roles": ["admin"]}
    assert time.time() + 3500 < result["expiresAt"] <= time.time() + 3601
    async with server(jwt_secret=OTHER_SECRET) as gw:
        assert (await refused_handshake(gw, token)).status_code == 401


# Secrets


async def test_tokens_and_secrets_never_reach_frames_or_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Bad, expired and good tokens, and the signing secret, appear in no frame and no log line."""
    secret = "signing-secret-" + secrets.token_hex(16)
    bad = "bad-token-" + secrets.token_hex(8)
    forged = jwt("alice", secret="forger-" + secrets.token_hex(16))
    expired = jwt("alice", secret=secret, ttl=60, now=time.time() - 3600)
    good = jwt("alice", secret=secret, ttl=600)
    static = "static-key-" + secrets.token_hex(8)
    sensitive = [secret, bad, forged, expired, good, static]
    received: list[str] = []

    async def frames_of(client: RawClient) -> None:
        async with asyncio.timeout(TIMEOUT):
            try:
                while True:
                    received.append(str(await client.ws.recv()))
            except ConnectionClosed:
                pass

    caplog.set_level(logging.DEBUG)
    async with server(api_keys={static: "sam"}, jwt_secret=secret) as gw:
        for token in (bad, forged, expired):
            response = await refused_handshake(gw, token)
            received.append(response.body.decode())
            async with raw_client(gw, token=None) as client:
                await client.send(
                    {"jsonrpc": "2.0", "method": "auth.login", "id": 1, "params": {"token": token}}
                )
                await frames_of(client)
        for token in (good, static):
            async with raw_client(gw, token) as client:
                await client.send({"jsonrpc": "2.0", "method": "auth.whoami", "id": 1})
                await client.send(
                    {"jsonrpc": "2.0", "method": "auth.refresh", "id": 2, "params": [token]}
                )
                await client.send(
                    {"jsonrpc": "2.0", "method": "auth.refresh", "id": 3, "params": [bad]}
                )
                await frames_of(client)
    assert len(received) >= 9
    # The test's own client logs what it sends; only the server side must stay quiet.
    server_lines = [
        record.getMessage() + (record.exc_text or "")
        for record in caplog.records
        if not record.name.startswith("websockets.client")
    ]
    assert any(line.startswith("< ") for line in server_lines), "no debug logging captured"
    for value in sensitive:
        assert not [frame for frame in received if value in frame]
        assert not [line for line in server_lines if value in line]
