"""Sign-in and sign-up attempts are limited per client IP and per username (running server).

Every test speaks from its own loopback address (127.0.0.x) so that the per-IP counters of one
test do not reach another; usernames are distinct too. Rates are per day, so that no window
can end in the middle of a test.
"""

from __future__ import annotations

import uuid

import httpx
import pytest
from django.contrib.auth import get_user_model

from tests.conftest import free_port
from tests.helpers import client_from, sign_in, sign_up

PASSWORD = "the right passphrase 42"


@pytest.fixture(scope="module")
def guarded_server(start_server):
    return start_server(
        "guarded",
        CHAT_PROVIDER="demo",
        CHAT_MODEL="demo",
        CHAT_SIGNIN_RATE_PER_USERNAME="3/d",
        CHAT_SIGNIN_RATE_PER_IP="6/d",
        CHAT_SIGNUP_RATE_PER_IP="3/d",
        CACHE_KEY_PREFIX=f"guarded-{uuid.uuid4().hex}",
    )


def is_signed_in(client: httpx.Client) -> bool:
    return client.get("/").status_code == 200


def assert_plain_429_page(response: httpx.Response) -> None:
    assert response.status_code == 429
    assert response.headers["content-type"].startswith("text/html")
    assert 1 <= int(response.headers["retry-after"]) <= 86400
    assert "<title>Too many attempts · chatsite</title>" in response.text
    assert '<a class="brand" href="/">chatsite</a>' in response.text  # the base template
    assert "Please wait " in response.text
    assert "no-store" in response.headers["cache-control"]


def test_after_three_wrong_passwords_even_the_right_one_is_refused(
    guarded_server, transactional_db
):
    get_user_model().objects.create_user("frank", password=PASSWORD)
    get_user_model().objects.create_user("grace", password=PASSWORD)

    with client_from(guarded_server.url, "127.0.0.11") as client:
        wrong = [sign_in(client, "frank", "wrong") for _ in range(3)]
        right = sign_in(client, "frank", PASSWORD)
        frank_signed_in = is_signed_in(client)
        form_still_shown = client.get("/accounts/login/").status_code
        other_user = sign_in(client, "grace", PASSWORD)

    assert [r.status_code for r in wrong] == [200] * 3
    assert all("didn't match" in r.text for r in wrong)
    assert_plain_429_page(right)
    assert not frank_signed_in
    assert form_still_shown == 200
    assert other_user.status_code == 302


def test_the_username_limit_holds_from_another_address_and_for_spellings_of_the_name(
    guarded_server, transactional_db
):
    get_user_model().objects.create_user("heidi", password=PASSWORD)
    with client_from(guarded_server.url, "127.0.0.12") as client:
        wrong = [sign_in(client, "heidi", "wrong").status_code for _ in range(3)]

    with client_from(guarded_server.url, "127.0.0.13") as client:
        right = sign_in(client, "heidi", PASSWORD)
        spellings = [sign_in(client, name, PASSWORD) for name in ("HEIDI", " heidi", "ｈｅｉｄｉ")]
        signed_in = is_signed_in(client)

    assert wrong == [200] * 3
    assert_plain_429_page(right)
    assert [r.status_code for r in spellings] == [429] * 3
    assert not signed_in


def test_one_address_trying_many_usernames_is_limited_by_the_per_ip_rate(
    guarded_server, transactional_db
):
    get_user_model().objects.create_user("ivan", password=PASSWORD)

    with client_from(guarded_server.url, "127.0.0.21") as client:
        guesses = [sign_in(client, f"guess-{n}", "wrong").status_code for n in range(6)]
        right = sign_in(client, "ivan", PASSWORD)
        signed_in = is_signed_in(client)
    with client_from(guarded_server.url, "127.0.0.22") as client:
        elsewhere = sign_in(client, "ivan", PASSWORD)

    assert guesses == [200] * 6
    assert_plain_429_page(right)
    assert not signed_in
    assert elsewhere.status_code == 302


def test_admin_sign_in_counts_with_the_site_sign_in(guarded_server, transactional_db):
    get_user_model().objects.create_superuser("judy", password=PASSWORD)

    with client_from(guarded_server.url, "127.0.0.31") as client:
        site = [sign_in(client, "judy", "wrong").status_code for _ in range(2)]
        admin = sign_in(client, "judy", "wrong", path="/admin/login/")
        admin_right = sign_in(client, "judy", PASSWORD, path="/admin/login/")
        admin_page = client.get("/admin/")

    assert site == [200, 200]
    assert admin.status_code == 200
    assert_plain_429_page(admin_right)
    assert admin_page.status_code == 302


def test_sign_ups_from_one_address_are_limited(guarded_server, transactional_db):
    with client_from(guarded_server.url, "127.0.0.41") as client:
        accepted = [sign_up(client, f"newcomer-{n}", PASSWORD).status_code for n in range(3)]
        refused = sign_up(client, "newcomer-3", PASSWORD)
    with client_from(guarded_server.url, "127.0.0.42") as client:
        elsewhere = sign_up(client, "newcomer-4", PASSWORD)

    assert accepted == [302] * 3
    assert_plain_429_page(refused)
    assert not get_user_model().objects.filter(username="newcomer-3").exists()
    assert elsewhere.status_code == 302
    assert get_user_model().objects.filter(username="newcomer-4").exists()


def test_attempts_that_cannot_be_counted_are_refused_with_503_not_500(
    start_server, transactional_db
):
    get_user_model().objects.create_user("kim", password=PASSWORD)
    server = start_server(
        "sign-in-redis-gone", CHAT_PROVIDER="demo", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"
    )

    with client_from(server.url, "127.0.0.51") as client:
        refused = sign_in(client, "kim", PASSWORD)
        signed_in = is_signed_in(client)

    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "5"
    assert "<title>Try again shortly · chatsite</title>" in refused.text
    assert not signed_in
    assert "sign-in attempts cannot be counted: Redis failed" in server.log()
