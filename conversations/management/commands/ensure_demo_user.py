from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

USERNAME = "demo"
PASSWORD = "demo-password"


class Command(BaseCommand):
    help = "Create the local 'demo' user for `make run` (refused unless DJANGO_DEBUG is on)."

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG:
            raise CommandError("ensure_demo_user is for local development (DJANGO_DEBUG=1) only.")
        User = get_user_model()
        if not User.objects.filter(username=USERNAME).exists():
            User.objects.create_user(USERNAME, password=PASSWORD)
        self.stdout.write(f"Sign in at http://127.0.0.1:8000/ as {USERNAME} / {PASSWORD}")
