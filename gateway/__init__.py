"""gateway: a real-time LLM chat gateway speaking JSON-RPC 2.0 over WebSocket."""

__version__ = "0.1.0"
