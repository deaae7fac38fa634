"""The chat page at `/`, the dashboard at `/dashboard`, and their static files, served as they
are (no build step). The dashboard asks for the admin key in the page; its data comes from
`/admin/stats`.

The page imports the JavaScript client from `/static/client/`, which is `clients/js/src` of the
source checkout: one copy of the client, the one its own test suite covers. An installed wheel
without the checkout serves the page without the client and says so in the page's status line.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Final

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

__all__ = ["page_routes"]

_STATIC: Final = Path(__file__).resolve().parents[1] / "web" / "static"
_CLIENT: Final = Path(__file__).resolve().parents[3] / "clients" / "js" / "src"
# Pages change with the code; a browser must not keep an old copy across an upgrade.
_HEADERS: Final = MappingProxyType(
    {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
)


class _Static(StaticFiles):
    """Static files with the headers above."""

    def file_response(self, *args: object, **kwargs: object) -> Response:
        response = super().file_response(*args, **kwargs)  # type: ignore[arg-type]
        response.headers.update(_HEADERS)
        return response


async def _index(request: Request) -> Response:
    return _page("index.html")


async def _dashboard(request: Request) -> Response:
    return _page("dashboard.html")


def _page(name: str) -> Response:
    return FileResponse(
        _STATIC / name,
        headers={
            **_HEADERS,
            # Model output is untrusted: no inline script, no foreign origins, no plugins.
            "Content-Security-Policy": (
                "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
                " connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
            ),
        },
    )


def page_routes() -> list[BaseRoute]:
    """`/`, `/dashboard`, `/static/…` and, in a source checkout, `/static/client/…`."""
    routes: list[BaseRoute] = [
        Route("/", _index, methods=["GET"]),
        Route("/dashboard", _dashboard, methods=["GET"]),
    ]
    if _CLIENT.is_dir():
        routes.append(Mount("/static/client", app=_Static(directory=_CLIENT), name="client"))
    routes.append(Mount("/static", app=_Static(directory=_STATIC), name="static"))
    return routes
