"""Prepare this project for the benchmark: migrate its database, make users with API tokens.

Prints one token per line. Run with the benchmark's DATABASE_URL in the environment.
"""

import os
import sys

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402

from conversations.models import ApiToken, Conversation  # noqa: E402
from conversations.tokens import api_token_create  # noqa: E402


def main(count: int) -> None:
    call_command("migrate", verbosity=0)
    Conversation.objects.all().delete()
    ApiToken.objects.all().delete()
    User = get_user_model()
    for index in range(count):
        user, _ = User.objects.get_or_create(username=f"bench{index}")
        print(api_token_create(owner=user, name="bench")[1])


if __name__ == "__main__":
    main(int(sys.argv[1]))
