"""The chat page at `/` in a real headless Chromium, against a real Estuary and the fake upstream.

Debian's `/usr/bin/chromium` driven by Playwright (its own browser download is not used). Some tests
save a screenshot in their pytest `tmp_path`: evidence of a run, not a file of the repository.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from estuary.testing import FakeUpstream, Scenario
from tests.state.helpers import REDIS_URL, delete_prefix, require_redis
from tests.support import APP_KEY, RunningGateway, ServerProcess, free_port, server_process

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


async def open_page(
    browser: Browser, gateway: RunningGateway | ServerProcess, width: int = 1280
) -> Page:
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


def _restartable_toml(upstream_url: str, tmp_path: Path, redis_prefix: str) -> str:
    """A gateway whose streams outlive it: resume logs in Redis, a target that can continue a
    partial answer (Kimi's preset), no drain on SIGTERM, and a ledger on disk."""
    return f"""
[server]
heartbeat_s = 0.2
shutdown_drain_s = 0

[auth]
keys = ["${{APP_KEY}}"]

[ledger]
url = "sqlite:///{tmp_path / "ledger.db"}"

[state]
url = "{REDIS_URL}"
prefix = "{redis_prefix}"

[providers.kimi]
preset = "moonshot"
base_url = "{upstream_url}"
api_key = "${{UPSTREAM_KEY}}"

[models.chat]
targets = ["kimi/fake-model"]
first_token_timeout_s = 10.0
idle_timeout_s = 10.0
"""


@pytest.mark.redis
@pytest.mark.timeout(90)
async def test_a_gateway_restart_mid_answer_resumes_without_duplicated_or_missing_text(
    browser: Browser, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """SIGTERM to `estuary serve` mid-answer and a new one on the same port: the page shows
    "Reconnecting…" meanwhile, then finishes the same message with exactly the scripted answer."""
    await require_redis()
    scenario = Scenario(text=tuple(f"w{i:02d} " for i in range(60)), gap_s=0.05)  # ~3 s
    upstream.script("fake-model", scenario)
    redis_prefix = f"estuary-test-{secrets.token_hex(6)}:"
    config = tmp_path / "estuary.toml"
    config.write_text(_restartable_toml(upstream.base_url, tmp_path, redis_prefix))
    port, log = free_port(), tmp_path / "server.log"
    try:
        async with server_process(config, port=port, log_path=log, cwd=tmp_path) as first:
            page = await open_page(browser, first)
            await ask(page, "Count to sixty, please")
            message = page.locator(".message.assistant")
            answer_element = message.locator(".body")
            await expect(answer_element).to_contain_text("w09")  # some of the answer...
            assert "w59" not in (await answer_element.text_content() or "")  # ...not all of it
            first.process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(first.process.wait(), 20)
        # No gateway on the port now, so the page cannot have resumed: it must be reconnecting,
        # with the answer so far kept and no error.
        await expect(message.get_by_test_id("reconnecting")).to_have_text("Reconnecting…")
        await expect(message).to_have_class(re.compile(r"\breconnecting\b"))
        await expect(page.locator("#status")).to_have_text("Connection lost. Reconnecting…")
        await expect(message.locator(".error")).to_have_count(0)
        await page.screenshot(path=tmp_path / "chat-reconnecting.png")

        async with server_process(config, port=port, log_path=log, cwd=tmp_path):
            await expect(page.locator("#stop")).to_be_hidden(timeout=40_000)  # the answer ended
            await expect(message.locator(".error")).to_have_count(0)
            final = (await answer_element.text_content() or "").strip()
            assert final == scenario.expected_text().strip()  # nothing twice, nothing missing
            await expect(page.locator(".message.assistant")).to_have_count(1)  # the same message
            await expect(message.get_by_test_id("reconnecting")).to_have_count(0)
            await expect(message).not_to_have_class(re.compile(r"\b(streaming|reconnecting)\b"))
            await expect(page.locator("#status")).to_have_text("")  # done, finishReason "stop"
            await expect(page.locator("#retry")).to_be_visible()
            await page.screenshot(path=tmp_path / "chat-resumed.png")
    finally:
        await delete_prefix(REDIS_URL, redis_prefix)
