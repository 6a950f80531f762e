"""``gateway`` command line: serve, token, chat, call."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace

from gateway.auth.tokens import mint_token, parse_ttl
from gateway.config import ConfigError, load_config

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    from gateway.server.app import Gateway

    logging.basicConfig(
        level=os.environ.get("GATEWAY_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # One line per handshake, and per upstream request, is noise at INFO.
    for noisy in ("websockets", "httpx2", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
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
    config = replace(config, server=server)
    asyncio.run(Gateway(config).run_until_signalled())
    return 0


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
