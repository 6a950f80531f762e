"""JSON-RPC 2.0 without a transport: codec, registry, session, outbound queue, discovery."""

from gateway.jsonrpc.outbound import Outbound, OutboundClosed
from gateway.jsonrpc.registry import Final, Follow, MethodSpec, Registry
from gateway.jsonrpc.session import RpcSession, SessionLimits

__all__ = [
    "Final",
    "Follow",
    "MethodSpec",
    "Outbound",
    "OutboundClosed",
    "Registry",
    "RpcSession",
    "SessionLimits",
]
