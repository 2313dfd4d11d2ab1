"""`exportctl scheduler [--interval S] [--once]`: fire due scheduled exports, run as a process.

Wakes every `--interval` seconds, fires due one-off requests and recurring schedule occurrences
(each exactly once, however many replicas run), and enqueues the maintenance sweeps on their own
cadence. SIGTERM or Ctrl-C ends it after the item in progress. `--once` runs a single pass and
prints what it enqueued as JSON, for an external cron. Services come from the environment
(DATABASE_URL, REDIS_URL, BROKER_URL ...), never from the local development stack.
"""

from __future__ import annotations

import argparse
import math
import sys

import orjson

from exportctl.environment import process_environ
from pipelines.settings import Settings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `exportctl scheduler`."""
    from workers.scheduling.process import (
        DEFAULT_INTERVAL_SECONDS,
        MAX_INTERVAL_SECONDS,
        MIN_INTERVAL_SECONDS,
    )

    parser = subparsers.add_parser(
        "scheduler",
        help="fire due scheduled and recurring exports (the Procfile's scheduler process)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--interval",
        type=_interval_seconds,
        default=DEFAULT_INTERVAL_SECONDS,
        metavar="S",
        help=f"seconds between passes, {MIN_INTERVAL_SECONDS} to {MAX_INTERVAL_SECONDS}"
        " (default %(default)s)",
    )
    parser.add_argument(
        "--once", action="store_true", help="run one pass, print what it did as JSON, exit"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the scheduler loop (or one pass); return the exit code."""
    from api.ratelimit import RateLimiter, create_redis
    from api.schedule_policy import scheduler_for
    from pipelines.logs import configure_logging
    from workers.broker import create_broker
    from workers.dispatch import Dispatcher
    from workers.scheduling.process import SchedulerLoop

    settings = Settings.from_env(process_environ())
    configure_logging(level=settings.log_level, log_format=settings.log_format)
    limiter = RateLimiter(
        create_redis(settings.redis_url),
        limit=settings.export_rate_limit,
        admin_limit=settings.export_admin_rate_limit,
    )
    queue = Dispatcher(create_broker(settings.effective_broker_url))
    loop = SchedulerLoop(
        scheduler_for(settings, queue=queue, limiter=limiter), interval_seconds=args.interval
    )
    if args.once:
        report = loop.run_once()
        if report is None:
            print("exportctl scheduler: the pass failed; see the log", file=sys.stderr)
            return 1
        document = {
            "now": report.now.isoformat(),
            "fired": [item.as_json() for item in report.fired],
            "maintenanceEnqueued": report.maintenance_enqueued,
        }
        sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    loop.install_signal_handlers()
    loop.run_forever()
    return 0


def _interval_seconds(text: str) -> float:
    """Parse `--interval`: a finite number of seconds within the loop's bounds."""
    from workers.scheduling.process import MAX_INTERVAL_SECONDS, MIN_INTERVAL_SECONDS

    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from exc
    # nan compares false with everything and inf overflows the wait: both are refused here.
    if not (math.isfinite(value) and MIN_INTERVAL_SECONDS <= value <= MAX_INTERVAL_SECONDS):
        raise argparse.ArgumentTypeError(
            f"must be from {MIN_INTERVAL_SECONDS} to {MAX_INTERVAL_SECONDS} seconds, got {text}"
        )
    return value
