"""Health endpoints, CORS by allowlist, and the anonymous demo setup."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp

from estuary.config import default_config
from tests.support import AUTH, RunningGateway, read_app_stream, serve_in_thread


async def test_health_endpoints_answer_without_credentials(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    """/healthz and /readyz need no key."""
    for path in ("/healthz", "/readyz"):
        async with http.get(gateway.url + path) as response:
            assert response.status == 200


async def test_cors_allows_only_listed_origins(
    make_gateway: Callable[..., RunningGateway], http: aiohttp.ClientSession
) -> None:
    """A listed origin gets CORS headers on a preflight; another origin does not."""
    gateway = make_gateway(server='cors_origins = ["http://localhost:5173"]')
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    url = f"{gateway.url}/api/chat/stream"
    async with http.options(url, headers={**preflight, "Origin": "http://localhost:5173"}) as ok:
        assert ok.status == 200
        assert ok.headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
    async with http.options(url, headers={**preflight, "Origin": "https://evil.example"}) as bad:
        assert bad.status == 400
        assert "Access-Control-Allow-Origin" not in bad.headers
    # The stream itself, from that page: CORS headers on the streamed response too.
    headers = {**AUTH, "Origin": "http://localhost:5173"}
    async with http.post(url, json={"message": "hi"}, headers=headers) as response:
        got = await read_app_stream(response)
    assert got.status == 200
    assert got.headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
    assert "x-request-id" in got.headers["Access-Control-Expose-Headers"].lower()


async def test_demo_setup_streams_anonymously(http: aiohttp.ClientSession) -> None:
    """With no config file, the demo model streams on loopback without any key."""
    with serve_in_thread(default_config()) as gateway:
        url = f"{gateway.url}/api/chat/stream"
        async with http.get(url, params={"message": "hi"}) as response:
            got = await read_app_stream(response)
    assert got.events[0]["provider"] == "demo"
    assert sum(e["type"] == "content" for e in got.events) > 10
    assert got.events[-1]["type"] == "done"
