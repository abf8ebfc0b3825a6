"""`td-gateway run`: settings from --flags, TD_* environment variables and --config FILE;
`td-gateway dead-letters ...` (gateway/dead_letters.py);
`td-gateway local-token [--revoke]` mints (or removes) the local API's token;
`td-gateway discover` probes for terminals.

Exit codes: 0 after SIGTERM/SIGINT, 75 (EXIT_RESTART) when the backend asked for a restart,
2 for a bad setting (one line saying which and what it accepts), 1 when storage fails.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
from collections.abc import Sequence

import structlog
import trio

from gateway import config as settings
from gateway import dead_letters, discovery, local_token, logsetup, tracing
from gateway.app import Gateway
from gateway.errors import ConfigError, StorageError

log = structlog.get_logger("gateway.cli")

EXIT_BAD_CONFIG = 2
EXIT_STORAGE = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="td-gateway", description="TD on-site gateway")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="serve agents and upload their logs", allow_abbrev=False)
    run.add_argument("--config", metavar="TD_CONFIG", help="TOML file with settings")
    settings.add_flags(run)
    dead_letters.add_parser(commands)
    commands.add_parser(
        "discover", help="find terminals answering on loopback ports", add_help=False
    )
    token = commands.add_parser(
        "local-token",
        help="mint the local API's bearer token (printed once; the previous one stops working)",
    )
    token.add_argument("--data-dir", metavar="TD_DATA_DIR", help="the gateway's data directory")
    token.add_argument("--revoke", action="store_true", help="remove the token; mint none")
    return parser


def _token_config(data_dir: str | None) -> settings.GatewayConfig:
    return settings.load(["--data-dir", data_dir] if data_dir else [], os.environ)


def local_token_main(revoke: bool, data_dir: str | None) -> int:
    """`td-gateway local-token [--revoke]`: the token goes to stdout, once, and nowhere else."""
    try:
        path = _token_config(data_dir).data_path
    except ConfigError as exc:
        print(f"td-gateway: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if revoke:
        existed = local_token.revoke(path)
        print("local API token revoked" if existed else "there was no local API token",
              file=sys.stderr)  # fmt: skip
        return 0
    print(local_token.mint(path))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["discover"]:
        return discovery.main(args[1:])
    namespace, _ = _parser().parse_known_args(args)  # --help and the subcommand
    if namespace.command == "dead-letters":
        return dead_letters.run(_parser().parse_args(args))
    if namespace.command == "local-token":
        _parser().parse_args(args)  # unknown flags are an error here
        return local_token_main(namespace.revoke, namespace.data_dir)
    config_file = namespace.config or os.environ.get("TD_CONFIG")
    flags = _without_config_flag(args[1:])
    try:
        config = settings.load(flags, os.environ, config_file)
    except ConfigError as exc:
        print(f"td-gateway: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    logsetup.configure(config.log_level)
    tracing.configure()
    # Whatever the gateway creates (SQLite side files, files moved aside) is its user's only.
    os.umask(0o077)
    try:
        return trio.run(_serve, config)
    except StorageError as exc:
        log.error("storage_failed", error=str(exc))
        return EXIT_STORAGE
    finally:
        tracing.shutdown()


def _without_config_flag(args: list[str]) -> list[str]:
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--config":
            skip = True
        elif not arg.startswith("--config="):
            kept.append(arg)
    return kept


async def _serve(config: settings.GatewayConfig) -> int:
    gateway = Gateway(config)
    tune_runtime()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    log.info("shutdown_requested", signal=signal.Signals(signum).name)
                    gateway.request_stop()

            nursery.start_soon(stop_on_signal)
            code = await gateway.run()
            nursery.cancel_scope.cancel()
    return code


def tune_runtime() -> None:
    """Interpreter settings for a gateway process (the benchmarks use them too)."""
    # Every logs request allocates ~500 short-lived, acyclic objects (decoded logs). With the
    # default gen0 threshold (700) the collector runs on almost every request and walks
    # the whole young heap; freezing what start-up built and collecting less often cut the
    # gateway's CPU per request measurably under load (bench/gateway_ingest.py).
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
    # The buffer's writer thread needs the GIL back after every SQLite and zstd call; with
    # the default 5 ms switch interval it queues behind the busy event loop and each commit
    # (and so each 202) waits. 0.5 ms took the ingest benchmark from ~0.66 to ~0.9 of bare.
    sys.setswitchinterval(0.0005)


if __name__ == "__main__":
    sys.exit(main())
