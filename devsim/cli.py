"""`td-devsim VENDOR ...`: run one simulated terminal."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

import trio

from devsim import biostar, zkteco
from devsim.hikvision import cli as hikvision_cli


def _users(text: str) -> tuple[str, ...]:
    """`5` (PINs 1001..1005) or `1001,1002,A7`."""
    if text.isdigit() and "," not in text:
        return tuple(str(1001 + i) for i in range(int(text)))
    return tuple(pin.strip() for pin in text.split(",") if pin.strip())


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _zkteco_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gateway", required=True, help="http://host:port of TD_ZK_LISTEN")
    parser.add_argument("--serial", required=True, help="the terminal's serial number")
    parser.add_argument(
        "--users",
        type=_users,
        default=_users("3"),
        help="enrolled PINs: a count (1001...) or a comma list",
    )
    parser.add_argument(
        "--punch-every",
        type=float,
        default=0.0,
        metavar="S",
        help="punch every S seconds, users in turn (0 = never)",
    )
    parser.add_argument(
        "--punches", type=int, default=0, help="stop punching after N (0 = no limit)"
    )
    parser.add_argument(
        "--poll-s",
        type=float,
        default=None,
        help="poll for commands every S s instead of the server's Delay",
    )
    parser.add_argument(
        "--error-delay-s",
        type=float,
        default=None,
        help="wait S s after a failure instead of the server's ErrorDelay",
    )
    parser.add_argument(
        "--drop-rate",
        type=_rate,
        default=0.0,
        help="share of requests whose connection is dropped unanswered",
    )
    parser.add_argument(
        "--resend-rate",
        type=_rate,
        default=0.0,
        help="share of acknowledged uploads sent a second time",
    )
    parser.add_argument("--slow-ms", type=int, default=0, help="pause inside every request")
    parser.add_argument(
        "--busy-rate",
        type=_rate,
        default=0.0,
        help="share of commands answered Return=-1005 (busy)",
    )
    parser.add_argument("--reboot-s", type=float, default=5.0, help="downtime of a reboot")
    parser.add_argument(
        "--zone-minutes",
        type=int,
        default=0,
        help="the zone its clock shows before a server sets one, minutes east of UTC",
    )
    parser.add_argument("--seed", type=int, default=None)


def _biostar_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18443)
    parser.add_argument("--user", default="admin")
    parser.add_argument(
        "--password",
        default=os.environ.get("TD_DEVSIM_PASSWORD"),
        help="the operator password (or TD_DEVSIM_PASSWORD, which `ps` does not show)",
    )
    parser.add_argument("--doors", type=int, default=2)
    parser.add_argument(
        "--users", type=_users, default=_users("3"), help="a count (1001...) or a comma list"
    )
    parser.add_argument(
        "--punch-every",
        type=float,
        default=0.0,
        metavar="S",
        help="an identify-success event every S seconds (0 = never)",
    )
    parser.add_argument("--latency-ms", type=int, default=0, help="delay before every answer")
    parser.add_argument("--busy-rate", type=_rate, default=0.0, help="share of calls answered 503")
    parser.add_argument(
        "--session-ttl-s", type=float, default=0.0, help="sessions expire after S s (0 = never)"
    )
    parser.add_argument("--seed", type=int, default=None)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="td-devsim", description="Simulate an access-control terminal for development."
    )
    vendors = parser.add_subparsers(dest="vendor", required=True, metavar="VENDOR")
    hikvision_cli.add_arguments(
        vendors.add_parser("hikvision", help="a Hikvision ISAPI terminal (DS-K1T341 like)")
    )
    _zkteco_parser(vendors.add_parser("zkteco", help="a ZKTeco terminal pushing to a gateway"))
    _biostar_parser(vendors.add_parser("biostar", help="a Suprema BioStar 2 server's REST API"))
    return parser


async def _run_zkteco(config: zkteco.TerminalConfig) -> None:
    terminal = zkteco.PushTerminal(
        config, echo=lambda line: print(f"td-devsim: {line}", flush=True)
    )
    print(
        f"td-devsim: ZKTeco terminal {config.serial} pushing to {config.gateway}; Ctrl-C to stop",
        flush=True,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(terminal.run)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                return


async def _run_biostar(config: biostar.ServerConfig) -> None:
    server = biostar.BioStarServer(config)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(biostar.serve, server)
        print(
            f"td-devsim: BioStar 2 server listening on http://{config.host}:{port} "
            f"(user {config.user!r}); Ctrl-C to stop",
            flush=True,
        )
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                return


def _main_biostar(args: argparse.Namespace) -> int:
    if not args.password:
        print("td-devsim: give --password or set TD_DEVSIM_PASSWORD", file=sys.stderr)
        return 2
    config = biostar.ServerConfig(
        host=args.host,
        port=args.port,
        user=args.user,
        password=args.password,
        doors=args.doors,
        users=args.users,
        punch_every_s=args.punch_every,
        latency_ms=args.latency_ms,
        busy_rate=args.busy_rate,
        session_ttl_s=args.session_ttl_s,
        seed=args.seed,
    )
    try:
        trio.run(_run_biostar, config)
    except OSError as exc:
        print(f"td-devsim: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.vendor == "hikvision":
        return hikvision_cli.run(args)
    if args.vendor == "biostar":
        return _main_biostar(args)
    config = zkteco.TerminalConfig(
        gateway=args.gateway,
        serial=args.serial,
        users=args.users,
        punch_every_s=args.punch_every,
        max_punches=args.punches,
        poll_s=args.poll_s,
        error_delay_s=args.error_delay_s,
        drop_rate=args.drop_rate,
        resend_rate=args.resend_rate,
        slow_ms=args.slow_ms,
        refuse_rate=args.busy_rate,
        reboot_s=args.reboot_s,
        zone_minutes=args.zone_minutes,
        seed=args.seed,
    )
    try:
        zkteco.PushTerminal(config)  # checks the address before anything runs
    except ValueError as exc:
        print(f"td-devsim: {exc}", file=sys.stderr)
        return 2
    trio.run(_run_zkteco, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
