"""The composition root: builds stores, providers and modules, and runs the server.

Shutting down (SIGTERM/SIGINT) drains: see :meth:`Gateway.drain`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import secrets
import signal
import weakref
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve

import gateway
from gateway import metrics
from gateway.auth.throttle import LoginThrottle
from gateway.auth.tokens import Authenticator, Identity, mint_token
from gateway.budgets import BudgetLedger, RedisBudgetLedger
from gateway.config import Config
from gateway.conversations import (
    ConversationStore,
    SqlConversationStore,
    StoreLimits,
    make_store,
)
from gateway.conversations.sqlite import DB_FILE
from gateway.errors import LimitExceeded, StoreUnavailable
from gateway.jsonrpc import Registry, SessionLimits
from gateway.jsonrpc.openrpc import discover
from gateway.leases import Leases, MemoryLeases, RedisLeases
from gateway.modules.base import register_module
from gateway.modules.chat import ChatModule, TokenBudget
from gateway.modules.conversation import ConversationModule
from gateway.modules.conversation_origin import OriginConversationModule
from gateway.node import node_id
from gateway.providers.router import ModelRouter
from gateway.server import telemetry
from gateway.server.admin_module import AdminModule
from gateway.server.auth_module import AuthModule
from gateway.server.closecodes import CloseCode
from gateway.server.connection import Connection
from gateway.server.http import WS_PATH, HttpRoutes, metrics_only
from gateway.server.redact import RedactingLogger, register_secrets
from gateway.server.secret import load_or_create_secret
from gateway.server.transport import GatewaySocket
from gateway.sessions.memory import MemorySessionStore
from gateway.sessions.redis import RedisSessionStore
from gateway.sessions.redislink import RedisLink
from gateway.sessions.store import SessionStore
from gateway.streams.hub import StreamHub
from gateway.streams.memory import MemoryStreamLog
from gateway.streams.module import StreamModule
from gateway.streams.protocol import StreamLog
from gateway.streams.redis import RedisStreamLog

__all__ = ["Gateway", "SharedState", "shared_state"]

GC_THRESHOLDS = (10_000, 2, 1_000)
"""The collector's thresholds once serving (gen0 allocations, gen1 and gen2 counts)."""

log = logging.getLogger(__name__)

WEB_ROOT = Path(__file__).resolve().parents[2] / "web"

DRAIN_POLL = 0.05
"""Seconds between the drain's looks for connections that became idle."""


@dataclass(slots=True)
class SharedState:
    """What several processes must share: sessions, concurrency leases, budgets."""

    store: SessionStore
    leases: Leases
    budget: TokenBudget | None
    link: RedisLink | None = None
    """The Redis connection behind them (``None`` for the memory store)."""


def shared_state(config: Config) -> SharedState:
    """The stores ``[sessions] store`` selects; Redis is connected by ``Gateway.start``."""
    sessions = config.sessions
    if sessions.store == "redis":
        link = RedisLink(sessions.url, prefix=sessions.prefix, timeout=sessions.redis_timeout)
        return SharedState(
            store=RedisSessionStore(
                link, max_sessions=sessions.max_sessions, max_age_hours=sessions.max_age_hours
            ),
            leases=RedisLeases(link, lease_seconds=sessions.lease_seconds),
            budget=RedisBudgetLedger(link, config.budgets) if config.budgets else None,
            link=link,
        )
    return SharedState(
        store=MemorySessionStore(max_sessions=sessions.max_sessions),
        leases=MemoryLeases(),
        budget=BudgetLedger(config.budgets) if config.budgets else None,
    )


class Gateway:
    """One gateway server. ``async with Gateway(config) as gw`` starts and stops it."""

    def __init__(
        self,
        config: Config,
        *,
        store: SessionStore | None = None,
        router: ModelRouter | None = None,
        budget: TokenBudget | None = None,
        shared: SharedState | None = None,
        conversations: ConversationStore | None = None,
    ) -> None:
        self.startup_token: str | None = None
        data_dir = Path(config.data_dir) if config.data_dir else None
        if not config.auth.api_keys and not config.auth.jwt_secret:
            # Never an open server: with no credentials configured, mint one token now,
            # signed by the data directory's secret so it (and open pages) outlive a restart.
            secret = load_or_create_secret(data_dir) if data_dir else secrets.token_urlsafe(32)
            config = replace(config, auth=replace(config.auth, jwt_secret=secret))
            self.startup_token = mint_token(
                secret, "local", ttl=30 * 86400, roles=("admin",), name="Local user"
            )
        self.config = config
        register_secrets(_secrets(config, self.startup_token))
        limits = config.limits
        self.authenticator = Authenticator(
            config.auth,
            throttle=LoginThrottle(
                per_address=limits.failed_logins_per_address,
                per_user=limits.failed_logins_per_user,
                window=limits.failed_login_window,
            ),
        )
        self.router = router or ModelRouter(config.models)
        self.shared = shared or shared_state(config)
        conv = config.conversations
        self._own_conversations = conversations is None
        self.conversations: ConversationStore = conversations or make_store(
            conv.url,
            sqlite_path=data_dir / DB_FILE if data_dir else None,
            limits=StoreLimits(
                conversations_per_user=conv.max_conversations_per_user,
                messages_per_conversation=conv.max_messages_per_conversation,
            ),
        )
        own = self.conversations
        embedded = isinstance(own, SqlConversationStore) and own.embedded
        if (
            store is None
            and data_dir is not None
            and embedded
            and self.shared.link is None
            and isinstance(own, SqlConversationStore)
        ):
            # The embedded default keeps sessions (model choice) in its database too.
            from gateway.sessions.sqlite import SqliteSessionStore

            store = SqliteSessionStore(own.runner, max_cached=config.sessions.max_sessions)
        self.store = store if store is not None else self.shared.store
        self.leases = self.shared.leases
        self.link = self.shared.link
        self.chat = ChatModule(
            router=self.router,
            store=self.store,
            default_model=config.default_model,
            limits=config.limits,
            budget=budget if budget is not None else self.shared.budget,
            leases=self.leases,
        )
        self.conversation = ConversationModule(
            chat=self.chat,
            store=self.conversations,
            config=conv,
            # One process owns an embedded database; shared ones track the node per answer.
            node=None if embedded else node_id(),
        )
        self.registry = Registry()
        register_module(self.registry, AuthModule(self.authenticator))
        register_module(self.registry, self.chat)
        register_module(self.registry, self.conversation)
        register_module(self.registry, OriginConversationModule(self.conversation))
        register_module(self.registry, AdminModule())
        self.call_metrics = metrics.CallMetrics(lambda name: self.registry.get(name) is not None)
        self.registry.add("rpc.discover", self._discover, public=True)
        self.streams: StreamHub | None = None
        if config.streams.enabled:
            cfg_streams = config.streams
            stream_log: StreamLog
            if self.link is not None:
                # Shared: any process resumes (and cancels) what any other produces.
                stream_log = RedisStreamLog(
                    self.link,
                    max_pieces=cfg_streams.max_pieces,
                    max_chars=cfg_streams.max_chars,
                    done_ttl=cfg_streams.done_ttl,
                    lease_seconds=config.sessions.lease_seconds,
                )
            else:
                stream_log = MemoryStreamLog(
                    max_pieces=cfg_streams.max_pieces,
                    max_chars=cfg_streams.max_chars,
                    done_ttl=cfg_streams.done_ttl,
                )
            self.streams = StreamHub(
                stream_log,
                resume_grace=cfg_streams.resume_grace,
                max_lag=cfg_streams.max_lag,
                node=node_id(),
            )
            register_module(self.registry, StreamModule(self.streams))
        limits = config.limits
        self.session_limits = SessionLimits(
            max_inflight=limits.inflight_per_connection,
            max_batch=config.server.max_batch,
            rate=limits.requests_per_second,
            burst=limits.request_burst,
            flood_limit=limits.flood_close_after,
        )
        self.draining = False
        """Set at the first moment of a shutdown: /readyz says 503, handshakes are refused."""
        self.pending_identities: weakref.WeakKeyDictionary[ServerConnection, Identity] = (
            weakref.WeakKeyDictionary()
        )
        """Identities from handshake headers, until the handler takes them (weak: a
        handshake that fails after the headers were checked leaves nothing behind)."""
        self.connections: set[Connection] = set()
        self._server: Server | None = None
        self._port: int | None = None
        self._metrics_server: Server | None = None
        self._background: list[asyncio.Task[None]] = []
        web_root = Path(config.server.web_root) if config.server.web_root else WEB_ROOT
        self._routes = HttpRoutes(self, web_root)

    async def _discover(self) -> dict:
        """The OpenRPC document of every method this gateway serves."""
        return discover(self.registry, title="gateway", version=gateway.__version__)

    @property
    def connection_count(self) -> int:
        return len(self.connections)

    @property
    def user_connections(self) -> Counter[str]:
        """This process's open connections per logged-in user."""
        return self.leases.held("conn")

    def health(self) -> dict[str, Any]:
        """Liveness (``/healthz``): this process runs; never asks Redis."""
        return {
            "status": "ok",
            "version": gateway.__version__,
            "node": node_id(),
            "connections": len(self.connections),
        }

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Readiness (``/readyz``): False while draining or while Redis is known unreachable."""
        if self.draining:
            return False, {"status": "draining", "node": node_id()}
        if self.link is not None and not self.link.healthy:
            return False, {"status": "degraded", "node": node_id(), "store": "unreachable"}
        return True, {"status": "ready", "node": node_id()}

    # Serving

    async def _handle(self, ws: ServerConnection) -> None:
        telemetry.bind(ws)
        conn = Connection(self, ws)
        identity = self.pending_identities.pop(ws, None)
        if len(self.connections) >= self.config.server.max_connections:
            await ws.close(CloseCode.TRY_AGAIN_LATER, "server at connection limit")
            telemetry.rejected("server_full", ws)
            return
        self.connections.add(conn)
        telemetry.connected(conn)
        try:
            if identity is not None:
                try:
                    await conn.login(identity)
                except LimitExceeded as exc:
                    await ws.close(CloseCode.CONNECTION_LIMIT, exc.message[:120])
                    return
                except StoreUnavailable:
                    await ws.close(CloseCode.STORE_UNAVAILABLE, "shared state unavailable")
                    return
            await conn.serve()
        finally:
            self.connections.discard(conn)
            telemetry.disconnected(conn, self)

    async def start(self) -> None:
        """Connect shared state (``StoreUnavailable`` if Redis is unreachable), then listen."""
        if self.link is not None:
            try:
                await self.link.connect()
            except StoreUnavailable:
                await self.link.aclose()
                raise
        cfg = self.config.server
        if self._own_conversations:
            await self.conversations.start()
        await self.conversation.start()
        self._server = await serve(
            self._handle,
            cfg.host,
            cfg.port,
            process_request=self._routes,
            create_connection=GatewaySocket,
            max_size=cfg.max_frame_bytes,
            ping_interval=cfg.ping_interval,
            ping_timeout=cfg.ping_timeout,
            close_timeout=cfg.close_timeout,
            compression="deflate" if cfg.compression else None,
            server_header=f"gateway/{gateway.__version__}",
            logger=RedactingLogger(logging.getLogger("websockets.server")),
            process_response=_name_the_node,
            # Several workers share one port (`gateway serve --workers N`).
            reuse_port=cfg.reuse_port,
        )
        self._port = int(self._server.sockets[0].getsockname()[1])
        sessions = self.config.sessions
        loop = asyncio.get_running_loop()
        self._background.append(loop.create_task(self._watch_sends()))
        if isinstance(self.leases, RedisLeases):
            self._background.append(loop.create_task(self.leases.run_renewals()))
        if cfg.metrics_port is not None:
            # reuse_port: every worker of `--workers N` binds it; any one answers for all.
            self._metrics_server = await serve(
                _no_websocket,
                cfg.metrics_host,
                cfg.metrics_port,
                process_request=metrics_only,
                reuse_port=True,
            )
        metrics.worker_started()
        self._background.append(loop.create_task(telemetry.run_flush()))
        self._background.append(
            asyncio.get_running_loop().create_task(self.conversation.run_cleanup())
        )
        self._background.append(
            asyncio.get_running_loop().create_task(
                self.chat.run_cleanup(
                    interval=sessions.cleanup_interval_seconds,
                    max_age_hours=sessions.max_age_hours,
                )
            )
        )

    async def _watch_sends(self) -> None:
        """Close connections whose current frame is stuck past ``send_timeout`` (4000).

        One sweep a fraction of a second for all connections costs far less than
        arming a timer for every frame sent.
        """
        send_timeout = self.config.server.send_timeout
        interval = min(1.0, send_timeout / 4)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for conn in self.connections:
                conn.check_send_deadline(now, send_timeout)

    @property
    def port(self) -> int:
        assert self._port is not None, "not started"
        return self._port

    @property
    def ws_url(self) -> str:
        return f"ws://{self.config.server.host}:{self.port}{WS_PATH}"

    @property
    def metrics_url(self) -> str:
        """Where ``GET /metrics`` is served."""
        if self._metrics_server is None:
            return f"{self.http_url}/metrics"
        port = self._metrics_server.sockets[0].getsockname()[1]
        return f"http://{self.config.server.metrics_host}:{port}/metrics"

    @property
    def http_url(self) -> str:
        return f"http://{self.config.server.host}:{self.port}"

    async def drain(self, timeout: float | None = None) -> None:
        """Shut down gracefully, then :meth:`stop`.

        At once: ``/readyz`` answers 503 and handshakes get HTTP 503. With
        ``reuse_port`` (workers sharing the port) the listening socket closes
        too, so the kernel sends new connections to the other workers; alone,
        it keeps listening so that probes see the 503. Every socket with no call running is
        closed with 1012 (reconnect now, elsewhere), now or as soon as its last
        call ends; running calls get ``timeout`` (``drain_timeout``) seconds.
        What is left is closed with 1001 by :meth:`stop`.
        """
        self.draining = True
        timeout = self.config.server.drain_timeout if timeout is None else timeout
        if self._server is not None and self.config.server.reuse_port:
            self._server.server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        busy = sum(1 for conn in self.connections if conn.session.inflight)
        telemetry.drain("draining", connections=len(self.connections), busy=busy)
        # With a shared stream log, a streaming answer needs no socket here: its client
        # resumes on another process while this one finishes generating it into the log.
        shared = self.streams is not None and self.streams.shared
        while self.connections and loop.time() < deadline:
            for conn in self.connections:
                session = conn.session
                if not (session.inflight_unlogged if shared else session.inflight):
                    conn.close_soon(CloseCode.SERVICE_RESTART, "server restarting; reconnect")
            await asyncio.sleep(DRAIN_POLL)
        if self.streams is not None and self.streams.running:
            telemetry.drain("streams", streams=self.streams.running)
            await self.streams.wait_idle(deadline - loop.time())
        if self.connections or (self.streams is not None and self.streams.running):
            telemetry.drain("timeout", logging.WARNING, connections=len(self.connections))
        await self.stop()

    async def stop(self) -> None:
        """Stop accepting, close every socket with 1001, wait for their calls to end."""
        self.draining = True
        for task in self._background:
            task.cancel()
        if self._server is not None:
            telemetry.drain("closing", connections=len(self.connections))
            self._server.close(close_connections=True)
            try:
                async with asyncio.timeout(self.config.server.shutdown_grace):
                    await self._server.wait_closed()
            except TimeoutError:
                log.warning("connections still open after %ss", self.config.server.shutdown_grace)
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.streams is not None:
            await self.streams.close()
        if self._metrics_server is not None:
            self._metrics_server.close()
            await self._metrics_server.wait_closed()
        await self.conversation.aclose()
        await self.router.aclose()
        if self.link is not None:
            await self.link.aclose()
        if self._own_conversations:
            await self.conversations.close()
        if self._server is not None:
            metrics.process_exiting()
            telemetry.drain("done")

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def run_until_signalled(self) -> None:
        """Serve until SIGTERM or SIGINT, then drain; a second signal exits at once (status 1)."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if stop.is_set():
                log.warning("second signal: exiting without waiting for the drain")
                logging.shutdown()
                os._exit(1)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        await self.start()
        try:
            # Everything built at start (SDKs, pydantic models, the token encoding: ~200,000
            # objects) lives until exit: keep the collector from rescanning it. Measured in
            # bench/README.md: 0.4 ms of GC per short answer before, 0.06 ms after.
            gc.freeze()
            # Under load (1,000 paced answers) the default thresholds (700, 10, 10) spent
            # about a quarter of the CPU in the collector, in full collections of 120-180 ms
            # that stall every stream, while finding almost no cyclic garbage. Fewer young
            # collections, small middle ones, full ones rarely (bench/README.md, providers).
            gc.set_threshold(*GC_THRESHOLDS)
            print(f"Gateway listening on {self.ws_url} (node {node_id()})", flush=True)
            if self._metrics_server is not None:
                print(f"Metrics on {self.metrics_url}", flush=True)
            if self.startup_token:
                print(
                    "No API keys configured: minted a token for this run (user 'local', admin).\n"
                    f"  Open the chat UI: {self.http_url}/#token={self.startup_token}\n"
                    f"  Token: {self.startup_token}",
                    flush=True,
                )
            await stop.wait()
            telemetry.drain("stop_accepting", timeout=self.config.server.drain_timeout)
        finally:
            await self.drain(None if stop.is_set() else 0)


def _name_the_node(connection: ServerConnection, request: Any, response: Any) -> None:
    """Name the serving process in every handshake response (``X-Gateway-Node``)."""
    response.headers["X-Gateway-Node"] = node_id()


def _secrets(config: Config, startup_token: str | None) -> list[str | None]:
    """Every credential this gateway knows: none of them may reach a log line."""
    upstream = [os.environ.get(m.api_key_env) for m in config.models if m.api_key_env]
    return [*config.auth.api_keys, config.auth.jwt_secret, startup_token, *upstream]


async def _no_websocket(ws: ServerConnection) -> None:
    """The metrics port answers plain HTTP only; a stray handshake is closed at once."""
    await ws.close(CloseCode.NORMAL, "metrics only")
