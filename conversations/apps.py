from django.apps import AppConfig
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class ConversationsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "conversations"
    verbose_name = "Conversations"

    def ready(self) -> None:
        from .attempts import RATE_SETTINGS
        from .limits import Rate, request_counter, stream_slots
        from .providers import get_provider

        get_provider()  # import the SDK and build its client now, not during the first request
        try:
            request_counter()
        except ValueError as error:
            raise ImproperlyConfigured(f"CHAT_RATE_LIMIT: {error}") from None
        for name in RATE_SETTINGS:
            try:
                Rate.parse(getattr(settings, name))
            except ValueError as error:
                raise ImproperlyConfigured(f"{name}: {error}") from None
        stream_slots()

        from chatsite.lifecycle import run_at_shutdown, run_at_startup

        from . import asyncdb, redis_client
        from .replies.running import replies_ainterrupt_running

        run_at_startup(asyncdb.apool_open, purpose="open the database pool")
        run_at_startup(redis_client.aconnect, purpose="connect to Redis")
        run_at_shutdown(replies_ainterrupt_running)
