"""Configuration: a TOML file (stdlib ``tomllib``) with environment overrides.

Precedence, lowest first: built-in defaults, the ``--config`` file, the
environment (``GATEWAY_*``), command-line flags. The embedded default (no
file) serves the offline models only.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from gateway.providers.base import ModelConfig

__all__ = [
    "DEFAULT_MODELS",
    "AuthConfig",
    "BudgetRule",
    "Config",
    "ConfigError",
    "ConversationsConfig",
    "LimitsConfig",
    "ServerConfig",
    "SessionsConfig",
    "StreamsConfig",
    "load_config",
]


class ConfigError(ValueError):
    """The configuration is invalid; the message says where."""


DEFAULT_MODELS: tuple[ModelConfig, ...] = (
    ModelConfig(
        name="offline",
        provider="offline",
        model="offline-echo",
        context_window=8192,
        max_output_tokens=512,
        tokens_per_second=30.0,
        description="Offline model paced like a person reading along (30 tokens/s). No key.",
    ),
    ModelConfig(
        name="offline-fast",
        provider="offline",
        model="offline-echo",
        context_window=8192,
        max_output_tokens=512,
        tokens_per_second=0.0,
        description="Offline model with no delay (benchmarks, tests). No key.",
    ),
)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    # Limits
    max_connections: int = 20_000
    """Open connections for the whole server; more are closed with 1013."""
    max_frame_bytes: int = 1024 * 1024
    """Largest inbound frame; larger ones close the connection with 1009."""
    max_batch: int = 100
    """Most items in one batch; larger batches are -32600."""
    outbound_queue_bytes: int = 1024 * 1024
    """Bytes of frames a connection may have queued before producers wait."""
    # Timeouts (seconds)
    auth_timeout: float = 10.0
    """A connection must authenticate within this time or is closed with 4502."""
    send_timeout: float = 10.0
    """A frame that cannot be written for this long closes the connection with 4000."""
    close_timeout: float = 5.0
    """How long a closing handshake may take before the TCP connection is dropped."""
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    drain_timeout: float = 25.0
    """On SIGTERM, running calls get this long to finish (idle sockets close at once with 1012)."""
    shutdown_grace: float = 3.0
    """After the drain, closing handshakes (1001) get this long before the process exits."""
    reuse_port: bool = False
    """SO_REUSEPORT: set for the workers of ``gateway serve --workers N`` (GATEWAY_REUSE_PORT=1)."""
    # Browsers
    allowed_origins: tuple[str, ...] = ()
    """Origins allowed to open a socket; empty means same origin only."""
    web_root: str | None = None
    """Directory served at ``/``; None serves the bundled ``web/``."""
    compression: bool = False
    """permessage-deflate; off by default (CPU and ~100 KiB per connection for little gain)."""
    # Metrics
    metrics_port: int | None = None
    """None serves ``GET /metrics`` on the main port; a port serves it only there."""
    metrics_host: str = "127.0.0.1"
    """Interface of the separate metrics port."""


@dataclass(frozen=True, slots=True)
class AuthConfig:
    api_keys: Mapping[str, str] = field(default_factory=dict)
    """token -> user id."""
    admins: frozenset[str] = frozenset()
    """User ids holding the admin role when they log in with a static key."""
    jwt_secret: str | None = None
    jwt_issuer: str = "gateway"


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    connections_per_user: int = 16
    streams_per_user: int = 4
    inflight_per_connection: int = 32
    requests_per_second: float = 50.0
    """Sustained call rate per connection (a token bucket)."""
    request_burst: int = 100
    flood_close_after: int = 200
    """Flood score closing the connection with 4001: each call refused for rate adds 1,
    the score drains by ``requests_per_second`` per second (see SessionLimits.flood_limit)."""
    max_message_chars: int = 32_000
    max_history_messages: int = 200
    max_history_chars: int = 400_000
    # Failed logins (see gateway/auth/throttle.py); 0 turns a limit off
    failed_logins_per_address: int = 20
    """Failed logins from one address within ``failed_login_window`` before it must wait."""
    failed_logins_per_user: int = 10
    """Failures of correctly signed tokens of one user within the window."""
    failed_login_window: float = 60.0


@dataclass(frozen=True, slots=True)
class SessionsConfig:
    store: str = "memory"
    """``memory`` (this process only) or ``redis`` (shared by every process on ``url``)."""
    url: str = "redis://127.0.0.1:6379/0"
    """Redis URL for ``store = "redis"`` (``GATEWAY_REDIS_URL``); a password may go in it."""
    prefix: str = "gw:"
    """Prefix of every Redis key, so several gateways can share one Redis."""
    redis_timeout: float = 1.0
    """Seconds a Redis call may take before it counts as an outage (-32020)."""
    lease_seconds: float = 15.0
    """Connection and stream counts of a process that died stop counting after this long."""
    max_sessions: int = 100_000
    """At the limit, the least recently active session is evicted."""
    max_age_hours: float = 24.0
    cleanup_interval_seconds: float = 600.0


@dataclass(frozen=True, slots=True)
class StreamsConfig:
    """Resumable streams: every streamed answer is logged so a client can resume it."""

    enabled: bool = True
    """False: no log and no resume; a disconnect cancels its streams (the old behaviour)."""
    # Timeouts (seconds)
    resume_grace: float = 60.0
    """A stream nobody follows (its client went away) runs on this long, then is cancelled."""
    done_ttl: float = 300.0
    """A finished stream can still be resumed (replayed whole) for this long."""
    # Limits
    max_pieces: int = 10_000
    """Pieces kept per stream; older ones are trimmed (resuming before them is a gap)."""
    max_chars: int = 16 * 1024 * 1024
    """Characters kept per stream, likewise."""
    max_lag: int = 256
    """Pieces a connected reader may fall behind before the producer waits for it."""


@dataclass(frozen=True, slots=True)
class ConversationsConfig:
    url: str | None = None
    """``postgresql://user@host/db`` for PostgreSQL; None keeps them in SQLite in the data
    directory (in memory when there is no data directory)."""
    # Limits
    max_conversations_per_user: int = 10_000
    max_messages_per_conversation: int = 2_000
    """Every message of the tree counts (edits and regenerated answers too)."""
    max_page_size: int = 200
    """Largest ``limit`` of conversation.list."""
    # Retention and housekeeping
    retention_days: float = 0.0
    """Delete conversations not updated for this many days (pinned ones stay); 0 keeps all."""
    cleanup_interval_seconds: float = 3600.0
    stale_stream_seconds: float = 3600.0
    """An answer still ``streaming`` this long after it started is marked ``interrupted``."""
    # Timeouts
    title_timeout_seconds: float = 10.0
    """Generating a title with the conversation's model; the question's first words after."""


@dataclass(frozen=True, slots=True)
class BudgetRule:
    """Token budget for users matching ``user`` or ``role`` (or everyone when both are None)."""

    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    user: str | None = None
    role: str | None = None


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    sessions: SessionsConfig = field(default_factory=SessionsConfig)
    streams: StreamsConfig = field(default_factory=StreamsConfig)
    models: tuple[ModelConfig, ...] = DEFAULT_MODELS
    default_model: str = "offline"
    budgets: tuple[BudgetRule, ...] = ()
    conversations: ConversationsConfig = field(default_factory=ConversationsConfig)
    data_dir: str | None = None
    """Where the embedded default keeps its database and signing secret (``gateway serve``
    uses ``./.gateway`` unless told otherwise); None keeps everything in memory."""

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)


def _section(cls: type, data: Any, where: str) -> Any:
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"[{where}] must be a table")
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ConfigError(f"[{where}] has unknown keys: {', '.join(sorted(unknown))}")
    values = {}
    for key, value in data.items():
        if isinstance(value, list):
            value = tuple(value)
        values[key] = value
    return cls(**values)


def _models(items: Any) -> tuple[ModelConfig, ...]:
    if not isinstance(items, list) or not items:
        raise ConfigError("[[models]] must be a non-empty array of tables")
    models = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ConfigError(f"[[models]] #{i + 1} must be a table")
        item = dict(item)
        for key in ("api_key", "key", "apikey"):
            if key in item:
                raise ConfigError(
                    f"[[models]] {item.get('name', i + 1)}: put the key in an environment "
                    "variable and name it with api_key_env; keys never sit in the config file"
                )
        for required in ("name", "provider", "model"):
            if required not in item:
                raise ConfigError(f"[[models]] #{i + 1} lacks {required!r}")
        if item["provider"] not in ("openai", "anthropic", "offline"):
            raise ConfigError(f"[[models]] {item['name']}: unknown provider {item['provider']!r}")
        models.append(_section(ModelConfig, item, f"models.{item['name']}"))
    names = [m.name for m in models]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ConfigError(f"[[models]] names are repeated: {', '.join(sorted(dupes))}")
    for m in models:
        missing = [f for f in m.fallbacks if f not in names]
        if missing:
            raise ConfigError(f"[[models]] {m.name}: unknown fallbacks {missing}")
    return tuple(models)


def _sessions(data: Any, env: Mapping[str, str]) -> SessionsConfig:
    sessions = _section(SessionsConfig, data, "sessions")
    if env.get("GATEWAY_REDIS_URL"):
        # The URL alone selects Redis: a worker given a Redis URL must not keep state alone.
        sessions = replace(sessions, url=env["GATEWAY_REDIS_URL"], store="redis")
    if env.get("GATEWAY_SESSIONS_STORE"):
        sessions = replace(sessions, store=env["GATEWAY_SESSIONS_STORE"])
    if sessions.store not in ("memory", "redis"):
        raise ConfigError(f"[sessions] store must be 'memory' or 'redis', not {sessions.store!r}")
    if sessions.lease_seconds <= 0 or sessions.redis_timeout <= 0:
        raise ConfigError("[sessions] lease_seconds and redis_timeout must be positive")
    return sessions


def parse_api_keys(text: str) -> dict[str, str]:
    """``user_id:token,user_id:token`` (split at the first colon) -> {token: user_id}."""
    keys: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        user, sep, token = pair.partition(":")
        if not sep or not user or not token:
            raise ConfigError("GATEWAY_API_KEYS must hold user_id:token pairs separated by commas")
        keys[token] = user
    return keys


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (if given) and apply environment overrides."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
    known = {
        "server",
        "auth",
        "limits",
        "sessions",
        "streams",
        "models",
        "default_model",
        "budgets",
        "conversations",
        "data_dir",
    }
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"unknown top-level keys: {', '.join(sorted(unknown))}")

    auth_data = dict(data.get("auth") or {})
    file_keys = auth_data.pop("api_keys", {}) or {}
    if not isinstance(file_keys, dict):
        raise ConfigError("[auth] api_keys must be a table of user_id = token")
    auth_data["admins"] = frozenset(auth_data.get("admins", ()))
    auth = _section(AuthConfig, auth_data, "auth")
    keys = {str(token): str(user) for user, token in file_keys.items()}
    if env.get("GATEWAY_API_KEYS"):
        keys.update(parse_api_keys(env["GATEWAY_API_KEYS"]))
    admins = set(auth.admins)
    if env.get("GATEWAY_ADMINS"):
        admins |= {a.strip() for a in env["GATEWAY_ADMINS"].split(",") if a.strip()}
    auth = replace(
        auth,
        api_keys=keys,
        admins=frozenset(admins),
        jwt_secret=env.get("GATEWAY_JWT_SECRET") or auth.jwt_secret,
    )

    server = _section(ServerConfig, data.get("server"), "server")
    if env.get("GATEWAY_HOST"):
        server = replace(server, host=env["GATEWAY_HOST"])
    if env.get("GATEWAY_PORT"):
        server = replace(server, port=int(env["GATEWAY_PORT"]))
    if env.get("GATEWAY_REUSE_PORT"):
        server = replace(server, reuse_port=env["GATEWAY_REUSE_PORT"] == "1")
    if env.get("GATEWAY_ALLOWED_ORIGINS"):
        origins = tuple(o.strip() for o in env["GATEWAY_ALLOWED_ORIGINS"].split(",") if o.strip())
        server = replace(server, allowed_origins=origins)

    models = _models(data["models"]) if "models" in data else DEFAULT_MODELS
    default_model = env.get("GATEWAY_DEFAULT_MODEL") or data.get("default_model") or models[0].name
    if default_model not in {m.name for m in models}:
        raise ConfigError(f"default_model {default_model!r} is not a configured model")
    budgets = tuple(_section(BudgetRule, b, "budgets") for b in (data.get("budgets") or []))
    conversations = _section(ConversationsConfig, data.get("conversations"), "conversations")
    if env.get("GATEWAY_CONVERSATIONS_URL"):
        conversations = replace(conversations, url=env["GATEWAY_CONVERSATIONS_URL"])
    data_dir = env.get("GATEWAY_DATA_DIR") or data.get("data_dir")
    if data_dir is not None and not isinstance(data_dir, str):
        raise ConfigError("data_dir must be a path string")
    return Config(
        server=server,
        auth=auth,
        limits=_section(LimitsConfig, data.get("limits"), "limits"),
        sessions=_sessions(data.get("sessions"), env),
        streams=_section(StreamsConfig, data.get("streams"), "streams"),
        models=models,
        default_model=default_model,
        budgets=budgets,
        conversations=conversations,
        data_dir=data_dir,
    )
