from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from redis.exceptions import RedisError

from conversations.replies import messages_interrupt_stale


class Command(BaseCommand):
    help = (
        "Mark replies still 'streaming' whose server process has stopped as 'interrupted' "
        "(with REDIS_URL, a reply whose process still beats is never marked, whatever its age)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than",
            type=float,
            default=settings.CHAT_STREAM_MAX_SECONDS + 60,
            help="Age in seconds (default: CHAT_STREAM_MAX_SECONDS + 60).",
        )

    def handle(self, *args, older_than: float, **options):
        try:
            count = messages_interrupt_stale(older_than=timedelta(seconds=older_than))
        except (RedisError, OSError) as error:
            raise CommandError(
                f"Redis cannot be reached to see which replies are still produced: {error}"
            ) from error
        self.stdout.write(f"{count} stale replies marked interrupted.")
