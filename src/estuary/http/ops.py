"""Operations endpoints: `/healthz` (the process is up), `/readyz` (it can serve), `/metrics`.

None of them needs a key: `/metrics` and `/readyz` say nothing secret, but they describe the
deployment, so keep them on a loopback or private address (docs/operations.md).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from estuary.gateway.health import OK
from estuary.gateway.metrics import CONTENT_TYPE
from estuary.gateway.session import Gateway
from estuary.http.drain import Drain

__all__ = ["OpsHandlers"]


class OpsHandlers:
    """Health, readiness and metrics of one gateway."""

    def __init__(self, gateway: Gateway, drain: Drain | None = None) -> None:
        self._gateway = gateway
        self._drain = drain

    async def healthz(self, request: Request) -> Response:
        """Always 200 while the process answers at all."""
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        """200 when every check passes, else 503 naming the checks that failed."""
        checks = await self._gateway.readiness()
        if self._drain is not None and self._drain.draining:
            checks["shutdown"] = "draining: this instance is shutting down"
        failed = sorted(name for name, verdict in checks.items() if verdict != OK)
        body = {"status": "unavailable" if failed else "ok", "checks": checks, "failed": failed}
        return JSONResponse(body, status_code=503 if failed else 200)

    async def metrics(self, request: Request) -> Response:
        """The Prometheus text format."""
        return Response(
            self._gateway.metrics.render(),
            headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"},
        )
