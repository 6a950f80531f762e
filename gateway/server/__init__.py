"""The websockets shell around the JSON-RPC session. Knows no chat."""

from gateway.server.app import Gateway
from gateway.server.closecodes import CloseCode

__all__ = ["CloseCode", "Gateway"]
