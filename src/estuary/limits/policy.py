"""Per-key policy, applied to a request before it is admitted: what a key may ask for at all.

A key used from a public page must not become a free general-purpose LLM. Its `KeyPolicy` names
the aliases it may call, caps `max_tokens`, may forbid client `system` messages, and may require
one of the server's prompt templates — a named system prompt whose `{{variables}}` the client may
only fill in. Every refusal is a clear 4xx; nothing here does I/O. Must not import the HTTP layer.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from estuary.core.errors import InvalidRequest, PermissionDenied, PolicyViolation
from estuary.core.policy import KeyPolicy
from estuary.core.requests import ChatRequest, UpstreamRequest

__all__ = ["PLACEHOLDER", "PolicyEnforcer", "PromptTemplate"]

PLACEHOLDER: Final = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_SYSTEM_ROLES: Final = frozenset({"system", "developer"})


@dataclass(frozen=True, slots=True, kw_only=True)
class PromptTemplate:
    """A server-side system prompt; the client supplies only the values of its variables."""

    name: str
    system: str
    variables: tuple[str, ...]
    max_chars: int = 4000  # per variable value

    def render(self, values: Mapping[str, str]) -> str:
        """The system prompt with every `{{name}}` replaced; refuses missing or unknown names."""
        unknown = sorted(set(values) - set(self.variables))
        if unknown:
            raise InvalidRequest(
                f"template '{self.name}' has no variable(s) {', '.join(unknown)};"
                f" it takes: {', '.join(self.variables) or 'none'}"
            )
        missing = [name for name in self.variables if name not in values]
        if missing:
            raise InvalidRequest(f"template '{self.name}' needs 'variables.{missing[0]}'")
        for name, text in values.items():
            if len(text) > self.max_chars:
                raise InvalidRequest(
                    f"'variables.{name}' is longer than {self.max_chars} characters"
                )
        # One pass over the template: a value that itself contains "{{x}}" is not expanded.
        return PLACEHOLDER.sub(lambda m: values[m.group(1)], self.system)


class PolicyEnforcer:
    """Applies a key's policy to a request for an alias, returning the request to send."""

    def __init__(self, templates: Mapping[str, PromptTemplate] | None = None) -> None:
        self._templates = MappingProxyType(dict(templates or {}))

    @property
    def templates(self) -> Mapping[str, PromptTemplate]:
        return self._templates

    def apply(self, policy: KeyPolicy, alias: str, request: UpstreamRequest) -> UpstreamRequest:
        """Check `request` against `policy`; fill in a template; raise a 4xx error if refused."""
        if policy.models is not None and alias not in policy.models:
            raise PermissionDenied(f"this key may not use the model '{alias}'")
        if policy.max_tokens is not None:
            if request.max_tokens is not None and request.max_tokens > policy.max_tokens:
                raise PolicyViolation(
                    f"'max_tokens' {request.max_tokens} is above this key's cap of"
                    f" {policy.max_tokens}"
                )
            if request.max_tokens is None:
                request = dataclasses.replace(request, max_tokens=policy.max_tokens)
        if not isinstance(request, ChatRequest):
            if policy.templates or not policy.allow_system:
                raise PolicyViolation(
                    "this key may only send chat requests (its policy controls the system prompt)"
                )
            return request
        if not policy.allow_system and any(
            m.get("role") in _SYSTEM_ROLES for m in request.messages
        ):
            raise PolicyViolation("this key may not send system messages")
        return self._fill_template(policy, request)

    def _fill_template(self, policy: KeyPolicy, request: ChatRequest) -> ChatRequest:
        name = request.template
        if name is None:
            if policy.templates:
                raise PolicyViolation(
                    f"this key must use a prompt template: send 'template' (one of"
                    f" {', '.join(policy.templates)}) and its 'variables'"
                )
            return request
        if policy.templates and name not in policy.templates:
            raise PolicyViolation(f"this key may not use the template '{name}'")
        template = self._templates.get(name)
        if template is None:
            raise InvalidRequest(f"no prompt template named '{name}'")
        system = {"role": "system", "content": template.render(request.variables)}
        return dataclasses.replace(
            request, messages=(system, *request.messages), template=None, variables={}
        )
