"""``admin.*``: what the whole gateway is doing now, for operators (admin role only).

``admin.status`` reads the same numbers ``GET /metrics`` exports (in
multiprocess mode, aggregated over every worker), so the two never disagree.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from gateway import metrics
from gateway.context import current_user
from gateway.errors import Forbidden
from gateway.modules.base import Module, exposed
from gateway.node import node_id

__all__ = ["AdminModule", "status"]


def status() -> dict[str, Any]:
    """Connections, users, streams, calls and per-model figures, over all workers."""
    totals: dict[str, float] = defaultdict(float)
    models: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    errors: dict[str, float] = defaultdict(float)
    for name, labels, value in metrics.samples():
        if name in (
            "gateway_connections",
            "gateway_users",
            "gateway_workers",
            "gateway_streams_detached",
            "gateway_connections_accepted_total",
            "gateway_slow_consumer_closes_total",
            "gateway_frames_sent_total",
        ):
            totals[name] += value
        elif name == "gateway_streams":
            totals[name] += value
            models[labels["model"]]["streams"] += value
        elif name == "gateway_calls_total":
            totals[name] += value
        elif name == "gateway_errors_total":
            errors[labels["code"]] += value
        elif name == "gateway_gen_ai_client_token_usage_sum":
            kind = "inputTokens" if labels["gen_ai_token_type"] == "input" else "outputTokens"
            models[labels["gen_ai_response_model"]][kind] += value
        elif name == "gateway_gen_ai_client_token_usage_count":
            if labels["gen_ai_token_type"] == "input":
                models[labels["gen_ai_response_model"]]["operations"] += value
        elif name == "gateway_gen_ai_failovers_total":
            models[labels["gen_ai_request_model"]]["failovers"] += value
        elif name == "gateway_gen_ai_upstream_errors_total":
            models[labels["gen_ai_request_model"]]["upstreamErrors"] += value
    keys = ("streams", "operations", "inputTokens", "outputTokens", "failovers", "upstreamErrors")
    return {
        "node": node_id(),
        "workers": int(totals["gateway_workers"]),
        "connections": int(totals["gateway_connections"]),
        "connectionsAccepted": int(totals["gateway_connections_accepted_total"]),
        "users": int(totals["gateway_users"]),
        "streams": {
            "running": int(totals["gateway_streams"]),
            "detached": int(totals["gateway_streams_detached"]),
        },
        "calls": int(totals["gateway_calls_total"]),
        "errors": {code: int(n) for code, n in sorted(errors.items()) if n},
        "framesSent": int(totals["gateway_frames_sent_total"]),
        "slowConsumerCloses": int(totals["gateway_slow_consumer_closes_total"]),
        "models": {
            name: {key: int(figures[key]) for key in keys}
            for name, figures in sorted(models.items())
            if any(figures.values())
        },
    }


class AdminModule(Module):
    namespace = "admin"

    @exposed("status")
    async def status(self) -> dict:
        """Connections, users, streams and models in use across all workers (admin role)."""
        if not current_user().is_admin:
            raise Forbidden("The admin role is required for admin.status")
        return status()
