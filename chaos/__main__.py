"""`python -m chaos [--duration S] [--agents N] [--seed N] [--faults-each N] [--fault KIND=N]`"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import trio

from chaos.faults import KINDS, schedule
from chaos.run import Options, chaos_run
from chaos.stack import Stack


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds agents post")
    parser.add_argument("--agents", type=int, default=16)
    parser.add_argument("--seed", type=int, default=None, help="default: a random one (printed)")
    parser.add_argument("--faults-each", type=int, default=5, help="faults of every kind")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND=N",
        help=f"faults of one kind, overriding --faults-each; kinds: {', '.join(KINDS)}",
    )
    parser.add_argument("--batch-size", type=int, default=100, help="logs per post")
    parser.add_argument(
        "--interval-s", type=float, default=0.25, help="an agent's pause between posts"
    )
    parser.add_argument("--command-interval-s", type=float, default=2.0)
    parser.add_argument("--command-expires-s", type=float, default=30.0)
    parser.add_argument("--drain-timeout-s", type=float, default=300.0)
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="the backend's and gateway's log level (their logs stay in the work directory)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary one")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (kept anyway on failure)"
    )
    return parser


def _fault_counts(args: argparse.Namespace) -> dict[str, int]:
    counts = dict.fromkeys(KINDS, args.faults_each)
    for item in args.fault:
        kind, _, number = item.partition("=")
        if kind not in KINDS or not number.isdigit():
            raise SystemExit(f"--fault {item!r}: expected KIND=N with KIND one of {KINDS}")
        counts[kind] = int(number)
    return counts


def _describe(exc: BaseException) -> str:
    """The innermost errors, not "Exceptions from Trio nursery"."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


def main() -> int:
    args = _parser().parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    options = Options(
        seed=seed,
        duration_s=args.duration,
        agents=args.agents,
        batch_size=args.batch_size,
        interval_s=args.interval_s,
        command_interval_s=args.command_interval_s,
        command_expires_s=args.command_expires_s,
        drain_timeout_s=args.drain_timeout_s,
    )
    faults = schedule(seed, args.duration, _fault_counts(args))
    # A short path: PostgreSQL's Unix socket lives under it (~100 bytes at most).
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="td-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    doors = int(args.duration / args.command_interval_s) + 2
    stack = Stack(workdir, doors=doors, log_level=args.log_level)
    began = time.monotonic()
    report: dict[str, object]
    try:
        stack.start_database_and_backend()
        stack.provision()
        stack.start_devsim()
        report = trio.run(chaos_run, stack, options, faults)
    except Exception as exc:
        traceback.print_exc()
        report = {
            "seed": seed,
            "ok": False,
            "error": _describe(exc),
            "backend_log_tail": stack.backend_log_tail(),
        }
    finally:
        stack.close()
    report["elapsed_s"] = round(time.monotonic() - began, 1)
    keep = args.keep or args.workdir is not None or not report.get("ok")
    if keep:
        report["workdir"] = str(workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(report), flush=True)
    return 0 if report.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
