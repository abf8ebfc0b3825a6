"""`td-backend maintenance`, `td-backend archive list [--org ORG]`,
`td-backend archive restore ORG MONTH`: each prints one JSON object."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import uuid
from collections.abc import Callable
from typing import Any

import msgspec

from backend.config import Config
from backend.crypto import secret_box_for
from backend.db import Database, migrate
from backend.lifecycle.archive import restore
from backend.lifecycle.retention import archive_store
from backend.lifecycle.store import ArchiveError, parse_month
from backend.services import Services


def add_commands(commands: Any) -> None:
    commands.add_parser(
        "maintenance", help="run one housekeeping pass (partitions, archive, retention) and exit"
    )
    archive = commands.add_parser("archive", help="list or restore archived log months")
    actions = archive.add_subparsers(dest="archive_command", required=True)
    listing = actions.add_parser("list", help='print {"items": [manifest, ...]}')
    listing.add_argument("--org", help="only this organisation's months (its id)")
    back = actions.add_parser(
        "restore", help="bring one organisation's month back into agent_logs (/v2/logs)"
    )
    back.add_argument("org", help="the organisation's id")
    back.add_argument("month", help="YYYY-MM")


def _uuid(text: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise ArchiveError(f"{what}: {text!r} is not an id") from None


async def _with_services(url: str, config: Config, work: Any) -> Any:
    await migrate(url)
    services = Services(
        config=config,
        db=Database(url, pool_size=2),
        secrets=secret_box_for(config.secret_key, config.data_path),
    )
    await services.db.start()
    try:
        return await work(services)
    finally:
        await services.db.close()


async def _maintenance(services: Services) -> dict[str, Any]:
    from backend.maintenance import run_maintenance

    await run_maintenance(services)
    return {"status": "done"}


def run(
    args: argparse.Namespace,
    config: Config,
    database: Callable[[], contextlib.AbstractContextManager[str]],
) -> int:
    """Runs a lifecycle command and prints its JSON; `database()` gives the URL to use
    (starting the embedded server) for the commands that need one."""
    if args.command == "maintenance":
        with database() as url:
            print(json.dumps(asyncio.run(_with_services(url, config, _maintenance))))
        return 0
    store = archive_store(config)
    if args.archive_command == "list":
        org = _uuid(args.org, "--org") if args.org else None
        items = [msgspec.to_builtins(m) for m in store.manifests(org)]
        print(json.dumps({"archive": store.root, "items": items}))
        return 0
    org_id = _uuid(args.org, "ORG")
    try:
        month = parse_month(args.month)
    except ValueError as exc:
        raise ArchiveError(f"MONTH: {exc}") from None

    async def restore_month(services: Services) -> dict[str, Any]:
        hold = dt.timedelta(days=config.archive_restore_hold_days)
        done = await restore(services.pool, store, org_id, month, hold)
        return {
            "org_id": str(done.org_id),
            "month": f"{done.month:%Y-%m}",
            "table": "agent_logs",
            "rows_in_archive": done.rows_in_archive,
            "rows_restored": done.rows_restored,
            "held_until": done.held_until.isoformat(),
        }

    with database() as url:
        print(json.dumps(asyncio.run(_with_services(url, config, restore_month))))
    return 0
