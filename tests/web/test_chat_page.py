"""The chat page at `/` in a real headless Chromium, against a real Estuary and the fake upstream.

Debian's `/usr/bin/chromium` driven by Playwright (its own browser download is not used). Some tests
save a screenshot in their pytest `tmp_path`: evidence of a run, not a file of the repository.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from estuary.testing import FakeUpstream, Scenario
from tests.support import APP_KEY, RunningGateway

CHROMIUM = "/usr/bin/chromium"

pytestmark = pytest.mark.browser


def _require_chromium() -> None:
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing: apt-get install chromium")
        pytest.skip("Chromium is missing: apt-get install chromium (scripts/ensure-chromium.sh)")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    _require_chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        await launched.close()


async def open_page(browser: Browser, gateway: RunningGateway, width: int = 1280) -> Page:
    context = await browser.new_context(viewport={"width": width, "height": 800})
    await context.add_init_script(f"localStorage.setItem('estuary.apiKey', '{APP_KEY}')")
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(f"{gateway.url}/")
    await page.wait_for_selector("#model option[value=chat]", state="attached")
    await page.select_option("#model", "chat")
    assert errors == []
    return page


async def ask(page: Page, text: str) -> None:
    await page.fill("#prompt", text)
    await page.press("#prompt", "Enter")


async def test_the_answer_grows_in_the_page_token_by_token(
    browser: Browser, gateway: RunningGateway, upstream: FakeUpstream, tmp_path: Path
) -> None:
    scenario = Scenario(tokens=20, gap_s=0.05)
    upstream.script("fake-model", scenario)
    page = await open_page(browser, gateway)
    await ask(page, "Tell me something")
    answer = page.locator(".message.assistant .body")
    states: list[str] = []
    while await page.locator("#stop").is_visible() or not states:
        text = await answer.text_content() if await answer.count() else ""
        if text and (not states or text != states[-1]):
            states.append(text)
        await asyncio.sleep(0.02)
    final = (await answer.text_content() or "").strip()
    assert final == scenario.expected_text().strip()
    # Several intermediate states, each a prefix of the next: it grew, it did not appear at once.
    assert len(states) >= 4
    assert all(final.startswith(state.strip()) for state in states)
    await page.screenshot(path=tmp_path / "chat-desktop.png")
    assert await page.locator("#retry").is_visible()


async def test_stop_cancels_the_upstream_and_keeps_the_partial_answer(
    browser: Browser, gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.script("fake-model", Scenario(tokens=400, gap_s=0.02))
    page = await open_page(browser, gateway)
    await ask(page, "A long story, please")
    answer = page.locator(".message.assistant .body")
    await expect(answer).to_have_text(re.compile(r"[\s\S]{10,}"))  # some of the answer arrived
    await page.click("#stop")
    (request,) = await upstream.wait_for_requests(1)
    await asyncio.wait_for(request.client_gone.wait(), 10)  # the upstream saw the cancel
    await page.locator("#send").wait_for()
    partial = await answer.text_content() or ""
    assert partial
    assert len(partial) < len(Scenario(tokens=400).expected_text())
    assert await page.text_content("#status") == "Stopped."


async def test_markup_in_model_output_is_inert(
    browser: Browser, gateway: RunningGateway, upstream: FakeUpstream, tmp_path: Path
) -> None:
    hostile = (
        '<img src=x onerror="window.__pwned = 1">',
        " [click me](javascript:window.__pwned=2)",
        " [docs](https://example.com/docs)",
        "\n\n```html\n<script>window.__pwned = 3</script>\n```\n",
        "**bold** and `code`",
    )
    upstream.script("fake-model", Scenario(text=hostile))
    page = await open_page(browser, gateway, width=390)  # a phone
    await ask(page, "Show me some markup")
    await page.locator("#send").wait_for()
    message = page.locator(".message.assistant .body")
    await message.locator("strong").wait_for()
    assert await page.evaluate("window.__pwned") is None
    assert await message.locator("img, script").count() == 0
    assert "<img src=x" in (await message.text_content() or "")  # shown as text
    links = message.locator("a")
    assert await links.count() == 1  # the javascript: link is plain text
    assert await links.get_attribute("href") == "https://example.com/docs"
    assert "noopener" in (await links.get_attribute("rel") or "")
    assert await message.locator("pre code").text_content() == (
        "<script>window.__pwned = 3</script>"
    )
    await page.screenshot(path=tmp_path / "chat-phone.png", full_page=True)


async def test_conversations_survive_a_reload(
    browser: Browser, gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    scenario = Scenario(tokens=3)
    upstream.script("fake-model", scenario)
    page = await open_page(browser, gateway)
    await ask(page, "Remember me")
    await page.locator("#retry").wait_for()
    await page.reload()
    await page.locator(".message.user").filter(has_text="Remember me").wait_for()
    assert (await page.text_content(".message.assistant .body") or "").strip() == (
        scenario.expected_text().strip()
    )
    assert await page.locator("#conversations button").first.text_content() == "Remember me"
