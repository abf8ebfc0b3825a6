"""`td-backend serve | migrate | create-org NAME | dburl | maintenance | archive list|restore`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import signal
import socket
import sys
import urllib.parse
from collections.abc import Iterator
from types import FrameType
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from backend.accounts.actor import Actor
from backend.accounts.users import checked_email, checked_password, insert_user
from backend.audit import record
from backend.auth import create_organization
from backend.config import Config, ConfigError, load_config
from backend.crypto import SecretBox, SecretKeyError, load_or_create_key
from backend.db import MigrationFailed, migrate
from backend.embedded import embedded_postgres
from backend.errors import BackendError
from backend.keycheck import check_secret_key
from backend.lifecycle import cli as lifecycle_cli
from backend.lifecycle.store import ArchiveError
from backend.logging import configure_logging, get_logger
from backend.pki.authority import CertificateAuthority

log = get_logger("backend.cli")


@contextlib.contextmanager
def database_url(config: Config, *, keep_running: bool = False) -> Iterator[str]:
    """TD_DATABASE_URL, or the embedded server under <data-dir>/pgdata for as long as needed."""
    if config.database_url:
        yield config.database_url
        return
    with embedded_postgres(config.data_path, stop_on_exit=not keep_running) as url:
        yield url


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into SystemExit so `finally` blocks stop the embedded database.
    raise SystemExit(128 + signum)


def serve(config: Config, host: str, port: int, workers: int) -> int:
    from granian.constants import Interfaces, Loops
    from granian.log import LogLevels
    from granian.server import Server

    if bool(config.tls_cert_file) != bool(config.tls_key_file):
        print(
            "td-backend: TD_TLS_CERT_FILE and TD_TLS_KEY_FILE: set both or neither", file=sys.stderr
        )
        return 2
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # Checked first, so a busy port is reported before a database is started for nothing.
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        print(f"td-backend: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return 1
    with database_url(config) as url:
        asyncio.run(migrate(url))
        # Workers are separate processes that read their config from the environment.
        os.environ["TD_DATABASE_URL"] = url
        os.environ["TD_DATA_DIR"] = str(config.data_path.resolve())
        # Created once here (when not configured), so workers never race to create it.
        key = config.secret_key or load_or_create_key(config.data_path)
        asyncio.run(_check_key(url, SecretBox(key)))
        if config.tls_cert_file and config.tls_key_file:
            # Direct topology (backend.pki.tls_server): hypercorn, so the app sees client
            # certificates; the CA's certificate is what the TLS layer verifies them with.
            config.data_path.mkdir(parents=True, exist_ok=True)
            client_ca = config.data_path / "client-ca.pem"
            client_ca.write_text(asyncio.run(_client_ca(url, SecretBox(key))))
            log.info("serving with TLS", host=host, port=port, client_ca=str(client_ca))
            from backend.pki.tls_server import serve_tls

            serve_tls(host, port, config.tls_cert_file, config.tls_key_file, client_ca)
            return 0
        log.info("serving", host=host, port=port, workers=workers, embedded=not config.database_url)
        Server(
            "backend.app:create_app_from_env",
            address=host,
            port=port,
            interface=Interfaces.ASGI,
            workers=workers,
            loop=Loops.auto,
            factory=True,
            # Granian's own lines (bind failures, worker crashes) at warning and above.
            log_level=LogLevels.warning,
            # Last resort for a worker that does not stop (sessions are closed on SIGTERM).
            workers_kill_timeout=15,
            websockets=True,
        ).serve()
    return 0


async def _check_key(url: str, secrets: SecretBox) -> None:
    conn = await asyncpg.connect(url)
    try:
        await check_secret_key(conn, secrets)
    finally:
        await conn.close()


OWNER_PASSWORD_ENV = "TD_OWNER_PASSWORD"


class OwnerPasswordMissing(ValueError):
    """No password for the first owner: none in the environment, a file or on a terminal."""


def owner_password(environ: dict[str, str], stdin: Any = None) -> str:
    """The first owner's password: TD_OWNER_PASSWORD, the file TD_OWNER_PASSWORD_FILE names,
    a prompt on a terminal, or the first line of stdin. Never a flag: argv is world-readable
    (ps, /proc) and kept in shell history."""
    stdin = stdin or sys.stdin
    if environ.get(OWNER_PASSWORD_ENV):
        return environ[OWNER_PASSWORD_ENV]
    if path := environ.get(OWNER_PASSWORD_ENV + "_FILE"):
        with open(path, encoding="utf-8") as file:
            return file.readline().rstrip("\r\n")
    if stdin.isatty():
        first = getpass.getpass("password of the first owner: ")
        if first != getpass.getpass("the same password again: "):
            raise OwnerPasswordMissing("the two passwords differ")
        return first
    line = str(stdin.readline()).rstrip("\r\n")
    if not line:
        raise OwnerPasswordMissing(
            f"give the owner's password in {OWNER_PASSWORD_ENV}, {OWNER_PASSWORD_ENV}_FILE,"
            " at the prompt or on stdin"
        )
    return line


async def _client_ca(url: str, secrets: SecretBox) -> str:
    conn = await asyncpg.connect(url)
    try:
        return (await CertificateAuthority.load_or_create(conn, secrets)).pem
    finally:
        await conn.close()


async def _create_org(
    url: str, name: str, owner: tuple[str, str, str] | None = None
) -> dict[str, str]:
    """The organisation, its first admin token and, given (email, name, password), its first
    owner, all in one transaction."""
    await migrate(url)
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            org_id, token = await create_organization(conn, name)
            answer = {"org_id": str(org_id), "admin_token": token}
            if owner is not None:
                email, owner_name, password = owner
                user = await insert_user(conn, org_id, email, owner_name, "owner", password)
                cli = Actor(org_id, "cli", None, "td-backend create-org", "owner")
                after = {key: user[key] for key in ("email", "name", "role")}
                await record(conn, "user.create", "user", user["id"], after=after, actor=cli)
                answer["owner_id"] = str(user["id"])
    finally:
        await conn.close()
    return answer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="td-backend", description=__doc__)
    parser.add_argument("--data-dir", help="state directory (default .td, or TD_DATA_DIR)")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the HTTP API (applies migrations first)")
    serve_cmd.add_argument("--host", default="127.0.0.1")
    serve_cmd.add_argument("--port", type=int, default=8000)
    serve_cmd.add_argument("--workers", type=int, default=1)
    commands.add_parser("migrate", help="apply pending migrations and exit")
    org_cmd = commands.add_parser(
        "create-org", help='print {"org_id", "admin_token"} (and "owner_id" with --owner-email)'
    )
    org_cmd.add_argument("name")
    org_cmd.add_argument(
        "--owner-email",
        help=f"also create the first owner user (password from {OWNER_PASSWORD_ENV},"
        f" {OWNER_PASSWORD_ENV}_FILE, a prompt or stdin)",
    )
    org_cmd.add_argument("--owner-name", help="the owner's name (default: the email)")
    commands.add_parser("dburl", help="print the PostgreSQL URL in use")
    lifecycle_cli.add_commands(commands)
    commands.add_parser(
        "client-ca", help="print the PEM of the CA that signs gateways' client certificates"
    )
    # --data-dir is accepted after the subcommand too (`td-backend serve --data-dir x`).
    for sub in commands.choices.values():
        sub.add_argument("--data-dir", dest="sub_data_dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    try:
        config = load_config(data_dir=getattr(args, "sub_data_dir", None) or args.data_dir)
    except ConfigError as exc:
        print(f"td-backend: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_format)
    try:
        return _run(args, config)
    except (OSError, asyncpg.PostgresError, MigrationFailed) as exc:
        where = _redacted(config.database_url) if config.database_url else "the embedded server"
        print(f"td-backend: cannot use the database ({where}): {exc}", file=sys.stderr)
        return 1
    except SecretKeyError as exc:
        print(f"td-backend: {exc}", file=sys.stderr)
        return 2
    except ArchiveError as exc:
        print(f"td-backend: {exc}", file=sys.stderr)
        return 1


def _redacted(url: str) -> str:
    """The URL without its password, fit for an error message."""
    parts = urllib.parse.urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return url


def _run(args: argparse.Namespace, config: Config) -> int:
    if args.command == "serve":
        return serve(config, args.host, args.port, args.workers)
    if args.command == "migrate":
        with database_url(config) as url:
            asyncio.run(migrate(url))
        print("migrations applied")
        return 0
    if args.command == "create-org":
        owner = None
        if args.owner_email is not None:
            try:
                email = checked_email(args.owner_email)
                password = checked_password(owner_password(dict(os.environ)))
            except (BackendError, OwnerPasswordMissing) as exc:
                print(f"td-backend: {getattr(exc, 'detail', exc)}", file=sys.stderr)
                return 2
            owner_name = args.owner_name or email
            if not 1 <= len(owner_name) <= 200 or "\x00" in owner_name:
                print("td-backend: --owner-name: 1 to 200 characters, no NUL", file=sys.stderr)
                return 2
            owner = (email, owner_name, password)
        with database_url(config) as url:
            print(json.dumps(asyncio.run(_create_org(url, args.name, owner))))
        return 0
    if args.command == "client-ca":
        # nginx's ssl_client_certificate (docs/gateway-mtls.md); created if it is not yet.
        with database_url(config) as url:
            asyncio.run(migrate(url))
            key = config.secret_key or load_or_create_key(config.data_path)
            print(asyncio.run(_client_ca(url, SecretBox(key))), end="")
        return 0
    if args.command == "dburl":
        # Left running, so the printed URL stays usable after this command exits.
        with database_url(config, keep_running=True) as url:
            print(url)
        return 0
    if args.command in ("maintenance", "archive"):
        return lifecycle_cli.run(args, config, lambda: database_url(config))
    return 2


if __name__ == "__main__":
    sys.exit(main())
