"""Authentication: tokens to users."""

from gateway.auth.tokens import Authenticator, Identity, mint_token, parse_ttl

__all__ = ["Authenticator", "Identity", "mint_token", "parse_ttl"]
