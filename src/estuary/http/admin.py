"""Key management, usage reports and config reload over HTTP: `/admin/keys`, `/admin/usage`,
`/admin/reload`, `/api/usage`.

The admin routes need the `[auth] admin_key`; `/api/usage` shows callers their own usage only (a
key's, or one end user's). Usage comes as JSON or, with `?format=csv`, as CSV.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final, cast, get_args

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from estuary.auth.keys import Authenticator, generate_key
from estuary.config import ConfigError
from estuary.core.errors import (
    AuthenticationFailed,
    InvalidConfig,
    InvalidRequest,
    NotFound,
    ReloadRefused,
)
from estuary.core.periods import parse_instant
from estuary.core.policy import KeyPolicy, KeyRecord, Principal
from estuary.gateway.session import Gateway
from estuary.http.inputs import authenticate, read_json
from estuary.ledger.base import Store, UsageDimension, UsageFilter, UsageTotal
from estuary.ledger.report import usage_csv
from estuary.reload import RestartRequired

__all__ = ["AdminHandlers", "Reload", "key_json"]

Reload = Callable[[], Awaitable[list[str]]]  # re-read the config file: the aliases now served

_DIMENSIONS: Final = frozenset(get_args(UsageDimension))
_POLICY_INTS: Final = ("rpm", "tpm", "concurrency", "max_tokens")
_CREATE_FIELDS: Final = frozenset(
    {"name", "models", "budget", "allow_system", "templates", "expires_at", *_POLICY_INTS}
)
_MAX_NAME: Final = 200
_STATS: Final[tuple[tuple[str, tuple[UsageDimension, ...]], ...]] = (
    ("by_day", ("day", "alias")),
    ("by_key", ("key",)),
    ("by_user", ("user",)),
    ("by_alias", ("alias",)),
)


class AdminHandlers:
    """The admin API and the caller's own usage."""

    def __init__(
        self,
        gateway: Gateway,
        authenticator: Authenticator,
        store: Store,
        max_body_bytes: int,
        *,
        reload: Reload | None = None,
    ) -> None:
        self._gateway = gateway
        self._auth = authenticator
        self._store = store
        self._max_body_bytes = max_body_bytes
        self._reload = reload

    async def create_key(self, request: Request) -> Response:
        self._require_admin(request)
        body = await read_json(request, self._max_body_bytes)
        name, policy, expires_at = self._key_request(body)
        plain, record = generate_key(name, policy, now=datetime.now(UTC), expires_at=expires_at)
        await self._store.add_key(record)
        return JSONResponse({"key": plain, **key_json(record)}, status_code=201)

    async def list_keys(self, request: Request) -> Response:
        self._require_admin(request)
        keys = await self._store.list_keys()
        return JSONResponse({"object": "list", "data": [key_json(k) for k in keys]})

    async def revoke_key(self, request: Request) -> Response:
        self._require_admin(request)
        key_id = request.path_params["key_id"]
        if not await self._store.revoke_key(key_id, datetime.now(UTC)):
            raise NotFound(f"no active key '{key_id}'")
        self._auth.forget(key_id)
        await self._gateway.revoked(key_id)  # the other instances drop their cached lookups
        return JSONResponse({"id": key_id, "revoked": True})

    async def admin_usage(self, request: Request) -> Response:
        self._require_admin(request)
        query = request.query_params
        where = _filter(request, key_id=query.get("key"), end_user=query.get("user"))
        return await self._usage(request, where, default_by=("day", "alias"))

    async def stats(self, request: Request) -> Response:
        """The dashboard's data: usage over time by model, by key and by user from the ledger;
        live numbers (open streams, time to first token, errors) from this process."""
        self._require_admin(request)
        where = _filter(request, key_id=None, end_user=None)
        if where.since is None:
            where = UsageFilter(since=datetime.now(UTC) - timedelta(days=7), until=where.until)
        series = {
            name: [{**t.group, **_sums(t)} for t in await self._store.usage(where, by)]
            for name, by in _STATS
        }
        return JSONResponse(
            {
                "since": where.since.isoformat() if where.since else None,
                **series,
                "live": self._gateway.metrics.snapshot(),
            }
        )

    async def reload(self, request: Request) -> Response:
        """`POST /admin/reload`: read the config file again; running streams are not touched.

        An invalid file is a 400 `invalid_config` with the loader's message (which names keys,
        never values); one that changes what needs a restart is a 409 `reload_refused`. Either
        way the running config stays.
        """
        self._require_admin(request)
        if self._reload is None:
            raise ReloadRefused("this server was started without a config file: nothing to reload")
        try:
            models = await self._reload()
        except RestartRequired as exc:
            raise ReloadRefused(str(exc)) from None
        except ConfigError as exc:
            raise InvalidConfig(str(exc)) from None
        return JSONResponse({"reloaded": True, "models": models})

    async def own_usage(self, request: Request) -> Response:
        principal: Principal = await authenticate(request, self._auth)
        where = _filter(request, key_id=principal.key_id, end_user=principal.end_user)
        return await self._usage(request, where, default_by=("day", "alias"))

    async def _usage(
        self, request: Request, where: UsageFilter, *, default_by: tuple[UsageDimension, ...]
    ) -> Response:
        by = _dimensions(request.query_params.get("by"), default_by)
        totals = await self._store.usage(where, by)
        fmt = request.query_params.get("format", "json")
        if fmt == "csv":
            return Response(
                usage_csv(totals, by),
                media_type="text/csv; charset=utf-8",
                headers={"Content-Disposition": 'attachment; filename="estuary-usage.csv"'},
            )
        if fmt != "json":
            raise InvalidRequest("'format' must be 'json' or 'csv'")
        data = [{**t.group, **_sums(t)} for t in totals]
        return JSONResponse({"object": "list", "by": list(by), "data": data})

    def _require_admin(self, request: Request) -> None:
        if not self._auth.is_admin(request.headers.get("authorization")):
            raise AuthenticationFailed("this endpoint needs the admin key ([auth] admin_key)")

    def _key_request(self, body: object) -> tuple[str, KeyPolicy, datetime | None]:
        if not isinstance(body, dict):
            raise InvalidRequest("the request body must be a JSON object")
        unknown = sorted(set(body) - _CREATE_FIELDS)
        if unknown:
            raise InvalidRequest(f"unknown field(s): {', '.join(unknown)}")
        name = body.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > _MAX_NAME:
            raise InvalidRequest(f"'name' must be a non-empty string of at most {_MAX_NAME}")
        ints = {field: _positive_int(body, field) for field in _POLICY_INTS}
        policy = KeyPolicy(
            models=self._aliases(body.get("models")),
            budget_micro=_budget(body.get("budget")),
            allow_system=_bool(body, "allow_system", default=True),
            templates=self._templates(body.get("templates")),
            **ints,
        )
        expires_at = None
        if (expires := body.get("expires_at")) is not None:
            now = datetime.now(UTC)
            try:
                expires_at = parse_instant(str(expires), now=now, future=True)
            except ValueError as exc:
                raise InvalidRequest(f"'expires_at': {exc}") from None
            if expires_at <= now:
                raise InvalidRequest("'expires_at' must be in the future")
        return name.strip(), policy, expires_at

    def _aliases(self, value: object) -> tuple[str, ...] | None:
        if value is None:
            return None
        names = _strings(value, "models")
        known = self._gateway.router.aliases
        for name in names:
            if name not in known:
                raise InvalidRequest(f"'models': no model '{name}'; known: {', '.join(known)}")
        return names

    def _templates(self, value: object) -> tuple[str, ...]:
        if value is None:
            return ()
        names = _strings(value, "templates")
        known = self._gateway.templates
        for name in names:
            if name not in known:
                listed = ", ".join(known) or "none configured"
                raise InvalidRequest(f"'templates': no template '{name}'; known: {listed}")
        return names


def key_json(record: KeyRecord) -> dict[str, Any]:
    """A key as the admin API shows it: never the key, never its digest."""
    now = datetime.now(UTC)
    status = "revoked" if record.revoked_at else "active" if record.usable_at(now) else "expired"
    return {
        "id": record.key_id,
        "name": record.name,
        "prefix": record.prefix,
        "status": status,
        "created_at": record.created_at.isoformat(),
        "expires_at": record.expires_at.isoformat() if record.expires_at else None,
        "revoked_at": record.revoked_at.isoformat() if record.revoked_at else None,
        "policy": record.policy.to_json(),
    }


def _sums(total: UsageTotal) -> dict[str, int]:
    return {
        "requests": total.requests,
        "errors": total.errors,
        "prompt_tokens": total.prompt_tokens,
        "completion_tokens": total.completion_tokens,
        "cost_micro": total.cost_micro,
    }


def _filter(request: Request, *, key_id: str | None, end_user: str | None) -> UsageFilter:
    query, now = request.query_params, datetime.now(UTC)
    try:
        since = parse_instant(query["since"], now=now) if "since" in query else None
        until = parse_instant(query["until"], now=now) if "until" in query else None
    except ValueError as exc:
        raise InvalidRequest(f"'since'/'until': {exc}") from None
    return UsageFilter(since=since, until=until, key_id=key_id, end_user=end_user)


def _dimensions(
    value: str | None, default: tuple[UsageDimension, ...]
) -> tuple[UsageDimension, ...]:
    if value is None:
        return default
    names = ["alias" if n.strip() == "model" else n.strip() for n in value.split(",") if n.strip()]
    for name in names:
        if name not in _DIMENSIONS:
            raise InvalidRequest(f"'by': {name!r} is not one of model, {', '.join(_DIMENSIONS)}")
    return tuple(cast(UsageDimension, n) for n in names)


def _strings(value: object, field: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidRequest(f"'{field}' must be a list of names")
    return tuple(value)


def _positive_int(body: dict[str, Any], field: str) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"'{field}' must be an integer >= 1")
    return value


def _budget(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise InvalidRequest("'budget' must be a number >= 0 (currency units, like [prices])")
    return round(value * 1_000_000)


def _bool(body: dict[str, Any], field: str, *, default: bool) -> bool:
    value = body.get(field, default)
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{field}' must be true or false")
    return value
