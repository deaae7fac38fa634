"""Circuit breakers shared over Redis: a target that failed for one instance is paused for all."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import aiohttp
import pytest

from estuary.config import load_config
from estuary.testing import FakeUpstream, Scenario
from tests.state.helpers import REDIS_URL, delete_prefix, require_redis
from tests.support import AUTH, ENVIRON, gateway_toml, serve_in_thread

pytestmark = pytest.mark.redis


async def test_a_breaker_opened_on_one_instance_pauses_the_target_on_the_other(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    await require_redis()
    prefix = f"estuary-test-{secrets.token_hex(4)}:"
    extra = (
        f'[state]\nurl = "{REDIS_URL}"\nprefix = "{prefix}"\n'
        "[routing]\nbreaker_failures = 1\nbreaker_cooldown_s = 60\n"
    )
    path = tmp_path / "estuary.toml"
    path.write_text(gateway_toml(upstream.base_url, extra=extra))
    upstream.script("primary-model", Scenario(fail_status=500))
    upstream.script("backup-model", Scenario(tokens=3))
    body = {"message": "hi", "model": "fallback-chat"}
    try:
        with (
            serve_in_thread(load_config(path, environ=ENVIRON)) as a,
            serve_in_thread(load_config(path, environ=ENVIRON)) as b,
        ):
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{a.url}/api/chat/stream", json=body, headers=AUTH) as r:
                    assert r.status == 200  # the backup answered; A's primary breaker opened
                    await r.read()
                tried = [seen.model for seen in upstream.requests]
                assert tried == ["primary-model", "backup-model"]
                for _ in range(100):  # the news travels over Redis pub/sub
                    async with http.get(f"{b.url}/metrics") as m:
                        metrics = await m.text()
                    if 'estuary_breaker_state{target="fake/primary-model"} 2.0' in metrics:
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("B never heard that A opened the breaker")
                async with http.post(f"{b.url}/api/chat/stream", json=body, headers=AUTH) as r:
                    assert r.status == 200
                    await r.read()
            # B went straight to the backup: the failing target was not called again.
            assert [seen.model for seen in upstream.requests][2:] == ["backup-model"]
    finally:
        await delete_prefix(REDIS_URL, prefix)
