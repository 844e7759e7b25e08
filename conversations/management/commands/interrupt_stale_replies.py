from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from redis.exceptions import RedisError

from conversations.replies import messages_interrupt_stale


class Command(BaseCommand):
    help = (
        "Mark replies still 'streaming' whose server process has stopped as 'interrupted' "
        "(with REDIS_URL, a reply whose process still beats is never marked, whatever its age)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            type=float,
            default=settings.CHAT_STREAM_MAX_SECONDS + 60,
            help="Age in seconds (default: CHAT_STREAM_MAX_SECONDS + 60).",
        )

    def handle(self, *args: Any, older_than: float, **options: Any) -> None:
        try:
            count = messages_interrupt_stale(older_than=timedelta(seconds=older_than))
        except (RedisError, OSError) as error:
            raise CommandError(
                f"Redis cannot be reached to see which replies are still produced: {error}"
            ) from error
        self.stdout.write(f"{count} stale replies marked interrupted.")
