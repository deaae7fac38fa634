"""Fixtures of the HTTP tests: the official OpenAI SDK pointed at the test gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest

from tests.support import APP_KEY, RunningGateway


@pytest.fixture
async def client(gateway: RunningGateway) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official SDK, with Estuary's key, no retries."""
    async with openai.AsyncOpenAI(
        base_url=f"{gateway.url}/v1", api_key=APP_KEY, max_retries=0, timeout=10
    ) as sdk:
        yield sdk
