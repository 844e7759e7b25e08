"""Loaded first (``-p tests.environment``): the test process's own settings environment.

The served site inherits this environment plus production-like overrides (``server_env`` in
conftest); both share one random secret key so a session made here is valid there.
"""

import os
import secrets

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
os.environ.setdefault("DJANGO_DEBUG", "1")
os.environ.setdefault("DJANGO_SECRET_KEY", secrets.token_urlsafe(50))
# A reply whose client left is stopped at once, here and in the servers the tests start (which
# inherit this environment); the tests of the detach grace set their own.
os.environ.setdefault("CHAT_DETACH_GRACE_SECONDS", "0")
# The model names no conversation here (a title request would be one more upstream request for
# every new conversation, and its title would replace the one tests look for); the tests of
# titles start their own servers with CHAT_AUTO_TITLES=1.
os.environ.setdefault("CHAT_AUTO_TITLES", "0")
# Playwright's sync API keeps an event loop in this thread; the ORM calls the tests make between
# browser steps are still plain synchronous calls.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
# Every test signs in from 127.0.0.1, and counters in Redis outlive a run: the sign-in and
# sign-up limits are raised here so that runs in a row are not refused. The tests of those
# limits start their own servers with low rates and a fresh CACHE_KEY_PREFIX.
for name in ("CHAT_SIGNIN_RATE_PER_IP", "CHAT_SIGNIN_RATE_PER_USERNAME", "CHAT_SIGNUP_RATE_PER_IP"):
    os.environ.setdefault(name, "1000/m")
