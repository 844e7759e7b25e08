"""The middleware stack runs on the event loop: no thread hop per middleware per request."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from asgiref.sync import SyncToAsync
from django.test import AsyncClient

from tests.loops import run_in_new_loop


@pytest.fixture
def thread_hops(monkeypatch) -> list[str]:
    """The names of the sync functions run through sync_to_async while the test runs."""
    hops: list[str] = []
    original = SyncToAsync.__call__

    async def counting(self, *args, **kwargs):
        hops.append(getattr(self.func, "__qualname__", repr(self.func)))
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__call__", counting)
    return hops


def middleware_hops(hops: list[str]) -> list[str]:
    return [name for name in hops if ".process_" in name]


def test_api_request_runs_every_middleware_hook_inline(thread_hops):
    response = run_in_new_loop(AsyncClient().put("/api/chat/stream"))

    assert response.status_code == 405
    assert response["X-Frame-Options"] == "DENY"
    assert "Content-Security-Policy" in response
    assert middleware_hops(thread_hops) == []


@pytest.mark.django_db(transaction=True)
def test_signing_in_saves_the_session_through_a_thread(thread_hops, make_user):
    from django.contrib.sessions.models import Session

    user = make_user("hopper")
    user.set_password("a long passphrase")
    user.save()

    response = run_in_new_loop(
        AsyncClient().post(
            "/accounts/login/",
            urlencode({"username": "hopper", "password": "a long passphrase"}),
            content_type="application/x-www-form-urlencoded",
        )
    )

    assert response.status_code == 302
    session_key = response.cookies["sessionid"].value
    assert Session.objects.get(session_key=session_key).get_decoded()["_auth_user_id"] == str(
        user.pk
    )
    assert middleware_hops(thread_hops) == ["SessionMiddleware.process_response"]
