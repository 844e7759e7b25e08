"""The project package as an app, so that its system checks are registered."""

from django.apps import AppConfig


class ChatsiteConfig(AppConfig):
    name = "chatsite"
    verbose_name = "chatsite"

    def ready(self) -> None:
        from . import checks  # noqa: F401 - registering is importing (Django's usual place)
        from .lifecycle import run_at_shutdown
        from .metrics import aprocess_stopping

        run_at_shutdown(aprocess_stopping)
