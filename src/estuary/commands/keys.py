"""`estuary keys create|list|revoke`: gateway keys in the ledger's database.

A new key is printed once, alone on stdout (so `KEY=$(estuary keys create --name app)` works), with
a summary on stderr; the store keeps only its digest. Nothing here ever prints a key again: lists
show its id and its first characters.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from estuary.auth.keys import generate_key
from estuary.commands._common import (
    ConfigOption,
    fail,
    format_time,
    load,
    parse_moment,
    stdout_console,
    utc_now,
    with_store,
)
from estuary.config import Config
from estuary.core.policy import KeyPolicy, KeyRecord
from estuary.ledger.base import Store
from estuary.ledger.report import format_micro

__all__ = ["keys_app", "policy_summary", "status"]

keys_app = typer.Typer(
    no_args_is_help=True,
    help="Create, list and revoke gateway keys (stored hashed in the ledger database).",
)

_MAX_NAME_CHARS = 100


def status(record: KeyRecord, now: datetime) -> str:
    """`revoked`, `expired` or `active` at `now`."""
    if record.revoked_at is not None:
        return "revoked"
    if record.expires_at is not None and record.expires_at <= now:
        return "expired"
    return "active"


def policy_summary(policy: KeyPolicy) -> str:
    """The limits of a policy in one line, `none` when it has none."""
    parts = [
        f"{name} {value}"
        for name in ("rpm", "tpm", "concurrency", "max_tokens")
        if (value := getattr(policy, name)) is not None
    ]
    if policy.budget_micro is not None:
        parts.append(f"budget {format_micro(policy.budget_micro)}")
    if not policy.allow_system:
        parts.append("no system messages")
    if policy.templates:
        parts.append(f"templates {','.join(policy.templates)}")
    return ", ".join(parts) or "none"


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Option(help="What the key is for (shown in lists)")],
    models: Annotated[
        str | None, typer.Option(help="Comma-separated aliases it may call (default: all)")
    ] = None,
    rpm: Annotated[int | None, typer.Option(min=1, help="Requests per minute")] = None,
    tpm: Annotated[int | None, typer.Option(min=1, help="Tokens per minute")] = None,
    concurrency: Annotated[int | None, typer.Option(min=1, help="Streams at once")] = None,
    budget: Annotated[
        float | None,
        typer.Option(min=0, help="Spend budget in currency units (as the price table)"),
    ] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="Cap on max_tokens")] = None,
    system: Annotated[
        bool, typer.Option("--system/--no-system", help="Allow client system messages")
    ] = True,
    template: Annotated[
        list[str] | None,
        typer.Option(help="A prompt template it must use (repeatable; a configured template)"),
    ] = None,
    expires: Annotated[
        str | None, typer.Option(help="30d, 12h, … from now, or a date like 2026-12-31 (UTC)")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Create a key; print it once on stdout (store it now) and a summary on stderr."""
    settings = load(config)
    name = name.strip()
    if not name or len(name) > _MAX_NAME_CHARS:
        fail(f"--name: give 1 to {_MAX_NAME_CHARS} characters", 2)
    if budget is not None and not math.isfinite(budget):
        fail("--budget: give a finite amount", 2)
    now = utc_now()
    expires_at = (
        None if expires is None else parse_moment(expires, now, ahead=True, option="--expires")
    )
    if expires_at is not None and expires_at <= now:
        fail(f"--expires: {format_time(expires_at)} is not in the future", 2)
    policy = KeyPolicy(
        models=_known_models(settings, models),
        rpm=rpm,
        tpm=tpm,
        concurrency=concurrency,
        budget_micro=None if budget is None else round(budget * 1_000_000),
        max_tokens=max_tokens,
        allow_system=system,
        templates=_known_templates(settings, template or []),
    )
    key, record = generate_key(name, policy, now=now, expires_at=expires_at)

    async def add(store: Store) -> None:
        try:
            await store.add_key(record)
        except ValueError:
            fail("could not store the new key (id taken); try again")

    with_store(settings, add)
    err = Console(stderr=True, highlight=False, emoji=False)
    err.print(f"Created key {record.key_id} [bold]{escape(name)}[/bold]")
    err.print(f"  models:  {escape(', '.join(policy.models or ('all',)))}")
    err.print(f"  limits:  {escape(policy_summary(policy))}")
    err.print(f"  expires: {format_time(expires_at)}")
    err.print("[bold]The key on stdout is shown once: store it now.[/bold]")
    typer.echo(key)


@keys_app.command("list")
def list_keys(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
    config: ConfigOption = None,
) -> None:
    """List the keys (never the keys themselves): id, name, status, models and limits."""
    records = with_store(load(config), _all_keys)
    now = utc_now()
    if as_json:
        for record in records:
            typer.echo(json.dumps(_as_json(record, now), ensure_ascii=False))
        return
    table = Table(title=f"Gateway keys ({len(records)})", title_justify="left")
    table.add_column("id", no_wrap=True)
    table.add_column("name")
    table.add_column("prefix", no_wrap=True)
    table.add_column("created", no_wrap=True)
    table.add_column("expires", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("models")
    table.add_column("limits")
    for record in records:
        table.add_row(
            record.key_id,
            escape(record.name),
            escape(record.prefix) + "…",
            format_time(record.created_at),
            format_time(record.expires_at),
            status(record, now),
            escape(", ".join(record.policy.models or ("all",))),
            escape(policy_summary(record.policy)),
        )
    stdout_console().print(table)


@keys_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id, as `estuary keys list` shows it")],
    config: ConfigOption = None,
) -> None:
    """Revoke a key at once; requests with it are refused from then on."""
    now = utc_now()

    async def run(store: Store) -> None:
        if await store.revoke_key(key_id, now):
            return
        found = next((r for r in await store.list_keys() if r.key_id == key_id), None)
        if found is None:
            fail(f"no key with id {key_id!r} (see `estuary keys list`)")
        fail(f"key {key_id} was already revoked at {format_time(found.revoked_at)}")

    with_store(load(config), run)
    typer.echo(f"Revoked key {key_id}.")


async def _all_keys(store: Store) -> list[KeyRecord]:
    return await store.list_keys()


def _known_models(config: Config, models: str | None) -> tuple[str, ...] | None:
    """The `--models` aliases, each of which must be in [models]."""
    if models is None:
        return None
    names = tuple(dict.fromkeys(m.strip() for m in models.split(",") if m.strip()))
    if not names:
        fail("--models: give at least one alias, or leave the option out for all", 2)
    unknown = [m for m in names if m not in config.models]
    if unknown:
        known = ", ".join(sorted(config.models)) or "none"
        fail(f"--models: unknown alias {', '.join(unknown)}; the config's aliases: {known}", 2)
    return names


def _known_templates(config: Config, templates: list[str]) -> tuple[str, ...]:
    """The `--template` names, each of which must be in [templates]."""
    defined = config.templates
    names = tuple(dict.fromkeys(templates))
    unknown = [t for t in names if t not in defined]
    if unknown:
        known = ", ".join(sorted(defined)) or "none"
        fail(f"--template: unknown template {', '.join(unknown)}; the config's: {known}", 2)
    return names


def _as_json(record: KeyRecord, now: datetime) -> dict[str, Any]:
    """A key as `--json` prints it: everything but the digest."""

    def iso(moment: datetime | None) -> str | None:
        return None if moment is None else moment.isoformat()

    return {
        "id": record.key_id,
        "name": record.name,
        "prefix": record.prefix,
        "created_at": iso(record.created_at),
        "expires_at": iso(record.expires_at),
        "revoked_at": iso(record.revoked_at),
        "status": status(record, now),
        "policy": record.policy.to_json(),
    }
