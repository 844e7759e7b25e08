from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand

from conversations.services import messages_interrupt_stale


class Command(BaseCommand):
    help = "Mark replies still 'streaming' after the longest possible stream as 'interrupted'."

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than",
            type=float,
            default=settings.CHAT_STREAM_MAX_SECONDS + 60,
            help="Age in seconds (default: CHAT_STREAM_MAX_SECONDS + 60).",
        )

    def handle(self, *args, older_than: float, **options):
        count = messages_interrupt_stale(older_than=timedelta(seconds=older_than))
        self.stdout.write(f"{count} stale replies marked interrupted.")
