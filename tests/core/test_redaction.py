"""The redactor: exact secrets and credential-shaped text, whatever the case; nothing else."""

from __future__ import annotations

import pytest

from estuary.core.redaction import Redactor

SECRET = "upstream-secret-42"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"the key {SECRET} leaked", "the key *** leaked"),
        (f"{SECRET}{SECRET}", "******"),
        ("Authorization: Bearer abc.def", "Authorization: Bearer ***"),
        ("authorization: BEARER abc", "authorization: BEARER ***"),
        ("key sk-proj-abcdef123 was wrong", "key *** was wrong"),
        ("GET /v1?Key=abc&x=1", "GET /v1?Key=***&x=1"),
        ("https://h/p?ACCESS_TOKEN=abc", "https://h/p?ACCESS_TOKEN=***"),
        ('{"X-Goog-Api-Key": "abc"}', '{"X-Goog-Api-Key": "***"}'),
        ("api-key=abc", "api-key=***"),
    ],
)
def test_secrets_and_credential_shapes_are_replaced(text: str, expected: str) -> None:
    assert Redactor([SECRET])(text) == expected


@pytest.mark.parametrize(
    "text",
    ["req_971e60ea170cc6d9003e335e", "completed", "a keyboard token of thanks", "", "skate-"],
)
def test_text_without_a_secret_is_unchanged(text: str) -> None:
    assert Redactor([SECRET])(text) == text


def test_learned_secrets_are_replaced_from_then_on() -> None:
    redact = Redactor()
    assert redact("new-secret-value") == "new-secret-value"
    redact.learn(["new-secret-value"])
    assert redact("x new-secret-value y") == "x *** y"
