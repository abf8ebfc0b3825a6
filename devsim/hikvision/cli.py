"""`td-devsim hikvision ...`: the flags, and running one simulated Hikvision terminal."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import sys
from functools import partial

import trio

from devsim.hikvision.people import play_attendance
from devsim.hikvision.sadp import answer_probes
from devsim.hikvision.server import serve_simulator
from devsim.hikvision.terminal import DEFAULT_SERIAL, SimulatedTerminal, SimulatorConfig


def _clock(text: str) -> dt.time:
    try:
        return dt.time.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time like 09:00") from None


def add_arguments(hik: argparse.ArgumentParser) -> None:
    hik.add_argument("--host", default="127.0.0.1")
    hik.add_argument("--port", type=int, default=18080)
    hik.add_argument("--user", default="admin")
    hik.add_argument(
        "--password",
        default=os.environ.get("TD_DEVSIM_PASSWORD"),
        help="the terminal's admin password (or TD_DEVSIM_PASSWORD, which `ps` does not show)",
    )
    hik.add_argument("--latency-ms", type=int, default=0, help="delay before every answer")
    hik.add_argument(
        "--busy-rate", type=float, default=0.0, help="share of calls answered deviceBusy (0..1)"
    )
    hik.add_argument(
        "--lockout-after", type=int, default=5, help="bad logins before lock-out (0 = never)"
    )
    hik.add_argument("--unlock-s", type=int, default=1800, help="how long a lock-out lasts")
    hik.add_argument("--reboot-s", type=float, default=30.0, help="downtime of a reboot")
    hik.add_argument("--serial", default=DEFAULT_SERIAL)
    hik.add_argument("--doors", type=int, default=1)
    hik.add_argument(
        "--nonce-max-uses",
        type=int,
        default=0,
        help="reject the Nth use of a nonce without a new challenge, as some firmware "
        "does (0 = never)",
    )
    hik.add_argument(
        "--unsupported",
        action="append",
        default=[],
        choices=["open", "close", "alwaysOpen", "alwaysClose"],
        help="a door cmd this terminal refuses with 403 notSupport (repeatable)",
    )
    hik.add_argument("--event-page-size", type=int, default=30, help="AcsEvent page cap")
    hik.add_argument("--seed", type=int, default=None, help="seed for --busy-rate")
    hik.add_argument(
        "--play-attendance",
        action="store_true",
        help="enrol a demo crowd with cards and badge them in and out over the day",
    )
    hik.add_argument(
        "--shift-start",
        type=_clock,
        default=dt.time(9),
        help="HH:MM (terminal local time) the demo crowd's day is anchored on",
    )
    hik.add_argument(
        "--no-alert-stream",
        action="store_true",
        help="firmware without /ISAPI/Event/notification/alertStream (answers notSupport)",
    )
    hik.add_argument(
        "--sadp",
        action="store_true",
        help="answer SADP inquiries sent to 239.255.255.250 on the loopback interface",
    )
    hik.add_argument("--sadp-port", type=int, default=37020, help="the SADP group's UDP port")
    hik.add_argument(
        "--sadp-multicast-reply",
        action="store_true",
        help="answer SADP to the group rather than to the prober, as some firmware does",
    )


async def _run(
    config: SimulatorConfig,
    shift_start: dt.time | None = None,
    sadp_port: int | None = None,
    sadp_multicast: bool = False,
) -> None:
    terminal = SimulatedTerminal(config)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_simulator, config, terminal=terminal))
        if sadp_port is not None:
            await nursery.start(
                partial(answer_probes, config, port, sadp_port=sadp_port, multicast=sadp_multicast)
            )
        if shift_start is not None:
            nursery.start_soon(play_attendance, terminal, shift_start)
        print(
            f"td-devsim: Hikvision terminal {config.serial} listening on "
            f"http://{config.host}:{port} (user {config.user!r}); Ctrl-C to stop",
            flush=True,
        )
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                return


def run(args: argparse.Namespace) -> int:
    if not args.password:
        print("td-devsim: give --password or set TD_DEVSIM_PASSWORD", file=sys.stderr)
        return 2
    if not 0.0 <= args.busy_rate <= 1.0:
        print("td-devsim: --busy-rate must be between 0 and 1", file=sys.stderr)
        return 2
    if not 1 <= args.sadp_port <= 65535:
        print("td-devsim: --sadp-port must be between 1 and 65535", file=sys.stderr)
        return 2
    config = SimulatorConfig(
        host=args.host,
        port=args.port,
        user=args.user,
        password=args.password,
        latency_ms=args.latency_ms,
        busy_rate=args.busy_rate,
        lockout_after=args.lockout_after,
        unlock_s=args.unlock_s,
        reboot_s=args.reboot_s,
        serial=args.serial,
        doors=args.doors,
        nonce_max_uses=args.nonce_max_uses,
        unsupported_commands=tuple(args.unsupported),
        event_page_size=args.event_page_size,
        seed=args.seed,
        alert_stream=not args.no_alert_stream,
    )
    try:
        trio.run(
            _run,
            config,
            args.shift_start if args.play_attendance else None,
            args.sadp_port if args.sadp else None,
            args.sadp_multicast_reply,
        )
    except OSError as exc:
        print(f"td-devsim: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0
