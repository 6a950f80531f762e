"""``gateway`` command line: serve, token, chat, call."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from dataclasses import replace

from gateway.auth.tokens import mint_token, parse_ttl
from gateway.config import Config, ConfigError, load_config

__all__ = ["DEFAULT_DATA_DIR", "main"]

DEFAULT_DATA_DIR = "./.gateway"


def _serve(args: argparse.Namespace) -> int:
    from gateway import logs
    from gateway.errors import StoreUnavailable
    from gateway.server.app import Gateway

    logs.setup(args.log_format, level=os.environ.get("GATEWAY_LOG_LEVEL", "INFO"))
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    server = config.server
    if args.host is not None:
        server = replace(server, host=args.host)
    if args.port is not None:
        server = replace(server, port=args.port)
    # With a data directory the state lives on disk: conversations, sessions, signing secret
    # (./scripts/serve passes ./.gateway). Without one, everything is in memory.
    data_dir = args.data_dir or config.data_dir or args.default_data_dir
    config = replace(config, server=server, data_dir=data_dir)
    if args.workers < 1:
        print("gateway: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.workers > 1:
        if data_dir is not None and not config.conversations.url:
            print(
                f"gateway: --workers {args.workers} with a data directory needs conversations "
                'in PostgreSQL ([conversations] url = "postgresql://..." or '
                "GATEWAY_CONVERSATIONS_URL): SQLite serves one process",
                file=sys.stderr,
            )
            return 2
        return _supervise(args, config)
    try:
        asyncio.run(Gateway(config).run_until_signalled())
    except StoreUnavailable as exc:
        print(f"gateway: {exc.message}", file=sys.stderr)
        return 2
    return 0


def _supervise(args: argparse.Namespace, config: Config) -> int:
    """Run ``args.workers`` workers under :class:`gateway.supervisor.Supervisor`."""
    import functools
    import secrets
    import shutil
    import tempfile

    from gateway import metrics
    from gateway.supervisor import WORKER_EXIT_HOOKS, Supervisor, reserve_port, worker_command

    if config.sessions.store == "memory":
        print(
            f"gateway: --workers {args.workers} needs a shared store ([sessions] store = "
            '"redis" or GATEWAY_REDIS_URL): with the memory store every worker would keep '
            "its own sessions, limits and budgets",
            file=sys.stderr,
        )
        return 2
    host, port = config.server.host, config.server.port
    reserved = reserve_port(host) if port == 0 else None
    if reserved is not None:
        port = int(reserved.getsockname()[1])
    env = dict(os.environ)
    token = None
    if not config.auth.api_keys and not config.auth.jwt_secret:
        # One secret for all workers, so the one token printed here works on each.
        env["GATEWAY_JWT_SECRET"] = secret = secrets.token_urlsafe(32)
        token = mint_token(secret, "local", ttl=30 * 86400, roles=("admin",), name="Local user")
    argv = ["--host", host, "--port", str(port)]
    if args.config:
        argv += ["--config", args.config]
    if args.log_format:
        argv += ["--log-format", args.log_format]
    # One metrics directory for the workers (multiprocess mode); a dead worker's live
    # gauges leave it as the supervisor sees it exit.
    shared = env.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="gateway-metrics-")
    env["PROMETHEUS_MULTIPROC_DIR"] = shared
    WORKER_EXIT_HOOKS.append(functools.partial(metrics.worker_died, path=shared))
    server = config.server
    supervisor = Supervisor(
        worker_command(argv),
        args.workers,
        env=env,
        stop_timeout=server.drain_timeout + server.shutdown_grace + 5,
    )
    print(f"Supervisor: {args.workers} workers on ws://{host}:{port}/ws", flush=True)
    if token:
        print(
            "No API keys configured: minted a token for this run (user 'local', admin).\n"
            f"  Open the chat UI: http://{host}:{port}/#token={token}\n"
            f"  Token: {token}",
            flush=True,
        )
    try:
        return asyncio.run(supervisor.run())
    finally:
        if reserved is not None:
            reserved.close()
        if shared != os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            shutil.rmtree(shared, ignore_errors=True)


def _token(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        ttl = parse_ttl(args.ttl)
    except (ConfigError, ValueError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    secret = config.auth.jwt_secret
    if not secret:
        print(
            "gateway: no signing secret; set GATEWAY_JWT_SECRET (or [auth] jwt_secret) "
            "to the same value for `gateway serve` and `gateway token`",
            file=sys.stderr,
        )
        return 2
    roles = tuple(args.role or ())
    print(
        mint_token(
            secret, args.user, ttl=ttl, roles=roles, name=args.name, issuer=config.auth.jwt_issuer
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8765; 0 picks a free one)")
    serve.add_argument("--config", help="TOML config file (see config.example.toml)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes on one port, supervised (default 1; above 1 needs the Redis store)",
    )
    serve.add_argument(
        "--data-dir",
        help="where conversations, sessions and the signing secret live (default: data_dir "
        "from the config or GATEWAY_DATA_DIR; none keeps them in memory; ./scripts/serve "
        f"uses {DEFAULT_DATA_DIR})",
    )
    serve.add_argument(
        "--default-data-dir",
        metavar="DIR",
        help="data directory when neither --data-dir, data_dir nor GATEWAY_DATA_DIR names one",
    )
    serve.add_argument(
        "--log-format",
        choices=("json", "text"),
        help="log lines on stderr (default: text on a terminal, else JSON)",
    )
    serve.set_defaults(func=_serve)

    token = sub.add_parser("token", help="mint a signed, expiring token for a user")
    token.add_argument("--user", required=True, help="user id (the token's subject)")
    token.add_argument("--ttl", default="1h", help="lifetime: 90s, 15m, 1h, 7d (default 1h)")
    token.add_argument("--role", action="append", help="role to grant (repeatable), e.g. admin")
    token.add_argument("--name", help="display name")
    token.add_argument("--config", help="TOML config file holding [auth] jwt_secret")
    token.set_defaults(func=_token)

    try:
        from gateway import cli_client
    except ImportError:
        pass
    else:
        cli_client.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
