import sys
from collections.abc import Callable

from django.core.management.base import BaseCommand, CommandError, CommandParser

from conversations.diagnostics import (
    DEFAULT_COUNT,
    DEFAULT_INTERVAL_MS,
    MAX_COUNT,
    MAX_IDLE_SECONDS,
    MAX_INTERVAL_MS,
    MIN_COUNT,
    MIN_INTERVAL_MS,
)
from conversations.streaming_check import CheckFailed, streaming_check

DEFAULT_IDLE_SECONDS = 90
"""``--idle`` alone: longer than the usual proxy and load balancer idle timeouts (60 s)."""

PROBLEMS_FOUND = 1
CHECK_FAILED = 2


def bounded(minimum: int, maximum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)
        if not minimum <= value <= maximum:
            raise ValueError(raw)
        return value

    parse.__name__ = f"integer from {minimum} to {maximum}"
    return parse


class Command(BaseCommand):
    help = (
        "Read the site's diagnostics stream the way a browser reads a reply and say whether "
        "something on the way buffers it, compresses it, or cuts idle connections. Exit "
        f"status 0: ok; {PROBLEMS_FOUND}: a problem was found; {CHECK_FAILED}: the stream "
        "could not be read."
    )
    requires_system_checks = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "site_url", help="The address readers use, e.g. https://chat.example.org"
        )
        parser.add_argument("--token", help="An API token of a staff user.")
        parser.add_argument(
            "--count",
            type=bounded(MIN_COUNT, MAX_COUNT),
            default=DEFAULT_COUNT,
            help=f"Frames to ask for (default {DEFAULT_COUNT}).",
        )
        parser.add_argument(
            "--interval-ms",
            type=bounded(MIN_INTERVAL_MS, MAX_INTERVAL_MS),
            default=DEFAULT_INTERVAL_MS,
            help=f"Milliseconds between frames (default {DEFAULT_INTERVAL_MS}).",
        )
        parser.add_argument(
            "--idle",
            type=bounded(1, MAX_IDLE_SECONDS),
            nargs="?",
            const=DEFAULT_IDLE_SECONDS,
            default=0,
            metavar="SECONDS",
            help="After the frames, ask for this long without a byte, to see whether the "
            f"connection is cut (default {DEFAULT_IDLE_SECONDS} s when given alone; off "
            "otherwise).",
        )

    def handle(
        self,
        *args: object,
        site_url: str,
        token: str | None,
        count: int,
        interval_ms: int,
        idle: int,
        **options: object,
    ) -> None:
        try:
            check = streaming_check(
                site_url=site_url,
                token=token,
                count=count,
                interval_ms=interval_ms,
                idle_seconds=idle,
            )
        except CheckFailed as error:
            raise CommandError(str(error), returncode=CHECK_FAILED) from None
        for line in check.report():
            self.stdout.write(line)
        if check.findings():
            sys.exit(PROBLEMS_FOUND)
