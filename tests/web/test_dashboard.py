"""The dashboard at `/dashboard` in a real Chromium shows the traffic just made."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser, async_playwright, expect

from estuary.testing import FakeUpstream, Scenario
from tests.support import ADMIN_KEY, AUTH, RunningGateway, read_app_stream
from tests.web.test_chat_page import CHROMIUM, _require_chromium

pytestmark = pytest.mark.browser


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    _require_chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        await launched.close()


async def test_the_dashboard_charts_the_traffic_just_made(
    browser: Browser,
    gateway: RunningGateway,
    upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    upstream.script("fake-model", Scenario(tokens=4))
    for _ in range(3):
        async with http.post(
            f"{gateway.url}/api/chat/stream", json={"message": "hi"}, headers=AUTH
        ) as response:
            assert (await read_app_stream(response)).events[-1]["type"] == "done"
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    await context.add_init_script(f"localStorage.setItem('estuary.adminKey', '{ADMIN_KEY}')")
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(f"{gateway.url}/dashboard")
    bars = page.locator("#requests-by-day rect[data-series=chat]")
    await expect(bars).to_have_count(1)
    assert await bars.get_attribute("data-value") == "3"
    await expect(page.locator("#ttft rect[data-series=p50]")).to_have_count(1)
    await expect(page.locator("#open-streams")).to_have_text("0")
    assert await page.locator("#cost-by-key text.empty").count() == 1  # no prices: no cost
    error_rate = page.locator("#error-rate rect")
    await expect(error_rate).to_have_count(1)
    assert await error_rate.get_attribute("data-value") == "0"
    await page.screenshot(path=tmp_path / "dashboard.png", full_page=True)
    assert errors == []


async def test_the_dashboard_needs_the_admin_key(browser: Browser, gateway: RunningGateway) -> None:
    page = await (await browser.new_context()).new_page()
    await page.goto(f"{gateway.url}/dashboard")
    await expect(page.locator("#status")).to_contain_text("admin key")
    await page.fill("#admin-key", "sk-est-not-the-admin-key")
    await page.click("#login button")
    await expect(page.locator("#status")).to_contain_text("admin key")
    await expect(page.locator("#status")).to_have_class("error")
