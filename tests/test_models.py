"""Picking a model: which models are on offer, the default, and that the choice is used and kept.

Through real servers: ``CHAT_MODELS`` given, or the list fetched from the fake upstream's
``GET /v1/models`` (cached, refreshed in the background, and a failure falls back to
``CHAT_MODEL`` alone).
"""

from __future__ import annotations

import re
import uuid

import httpx
import pytest

from conversations.models import Conversation, Message
from tests.helpers import session_client, wait_for, wait_for_status

OFFERED = ["fake-model", "fake-large", "fake-small"]


@pytest.fixture(scope="module")
def models_server(start_server, fake_upstream):
    """A site offering three models by CHAT_MODELS (fake-model, CHAT_MODEL, the default)."""
    return start_server(
        "models-fixed",
        CHAT_PROVIDER="openai",
        OPENAI_BASE_URL=fake_upstream.base_url,
        CHAT_MODELS=",".join(OFFERED[1:]),
        CHAT_AUTO_TITLES="0",
    )


@pytest.fixture
def api(models_server, user, transactional_db):
    with session_client(models_server.url, user) as client:
        yield client


def post(client, **payload):
    return client.post("/api/chat/stream", json=payload)


def streamed_model(fake_upstream, trigger: str) -> str:
    """The model the upstream was asked for in the last streaming request for ``trigger``."""
    requests = [r for r in fake_upstream.requests_for(trigger) if r.streaming]
    assert requests, f"no streaming request for {trigger!r}"
    return requests[-1].body["model"]


def options_of(page_html: str) -> list[str]:
    select = re.search(r'<select id="model-select".*?</select>', page_html, re.S)
    assert select, "the page has no model picker"
    return re.findall(r'<option value="([^"]*)"', select.group(0))


def selected_of(page_html: str) -> str:
    select = re.search(r'<select id="model-select".*?</select>', page_html, re.S).group(0)
    return re.search(r'<option value="([^"]*)" selected', select).group(1)


def test_a_model_on_offer_is_asked_upstream_and_saved_on_the_conversation_and_reply(
    api, fake_upstream
):
    trigger = f"pick large {uuid.uuid4().hex}"
    response = post(api, message=trigger, model="fake-large")

    assert response.status_code == 200, response.text
    assert streamed_model(fake_upstream, trigger) == "fake-large"
    reply = wait_for_status(int(response.headers["x-message-id"]))
    assert reply.model == "fake-large"
    assert reply.conversation.model == "fake-large"
    detail = api.get(f"/api/conversations/{reply.conversation_id}").json()
    assert detail["model"] == "fake-large"
    assert detail["messages"][-1]["model"] == "fake-large"


def test_without_a_model_a_new_conversation_gets_the_default_and_a_stored_one_keeps_its_own(
    api, fake_upstream
):
    first = f"default {uuid.uuid4().hex}"
    response = post(api, message=first)
    assert streamed_model(fake_upstream, first) == "fake-model"
    conversation_id = int(response.headers["x-conversation-id"])
    wait_for_status(int(response.headers["x-message-id"]))

    switch = f"switch {uuid.uuid4().hex}"
    post(api, message=switch, conversation_id=conversation_id, model="fake-small")
    assert streamed_model(fake_upstream, switch) == "fake-small"
    assert Conversation.objects.get(pk=conversation_id).model == "fake-small"

    follow_up = f"follow up {uuid.uuid4().hex}"
    response = post(api, message=follow_up, conversation_id=conversation_id)
    assert streamed_model(fake_upstream, follow_up) == "fake-small"
    reply = wait_for_status(int(response.headers["x-message-id"]))
    assert reply.model == "fake-small"
    replies = Message.objects.filter(conversation_id=conversation_id, role="assistant")
    assert [m.model for m in replies] == ["fake-model", "fake-small", "fake-small"]


def test_a_model_not_on_offer_is_refused_naming_those_on_offer(api, fake_upstream):
    trigger = f"refused {uuid.uuid4().hex}"

    response = post(api, message=trigger, model="gpt-9-ultra")

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "model_not_allowed"
    assert error["allowed"] == OFFERED
    assert "fake-model, fake-large, fake-small" in error["message"]
    assert fake_upstream.requests_for(trigger) == []
    assert not Message.objects.filter(content=trigger).exists()


def test_a_model_that_is_not_a_string_is_refused_naming_the_field(api):
    response = post(api, message="typed", model=7)

    assert response.status_code == 400
    assert response.json()["error"]["message"] == "'model' must be a string."


def test_the_get_stream_takes_the_model_as_a_query_parameter(api, fake_upstream):
    trigger = f"get small {uuid.uuid4().hex}"
    response = api.get("/api/chat/stream", params={"message": trigger, "model": "fake-small"})

    assert response.status_code == 200
    assert streamed_model(fake_upstream, trigger) == "fake-small"
    assert wait_for_status(int(response.headers["x-message-id"])).model == "fake-small"

    refused = api.get("/api/chat/stream", params={"message": trigger, "model": "nope"})
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "model_not_allowed"


def test_the_page_offers_the_models_and_selects_the_conversations(api, fake_upstream):
    assert options_of(api.get("/").text) == OFFERED
    assert selected_of(api.get("/").text) == "fake-model"

    response = post(api, message=f"for the page {uuid.uuid4().hex}", model="fake-small")
    wait_for_status(int(response.headers["x-message-id"]))
    page = api.get(f"/c/{response.headers['x-conversation-id']}/").text
    assert selected_of(page) == "fake-small"


def test_the_models_on_offer_are_listed_for_api_clients(api, models_server):
    response = api.get("/api/models")

    assert response.status_code == 200
    assert response.json() == {"default": "fake-model", "models": OFFERED}
    assert httpx.get(f"{models_server.url}/api/models").status_code == 401


def test_the_demo_provider_offers_its_own_model(start_server, user, transactional_db):
    demo = start_server("models-demo", CHAT_PROVIDER="demo", CHAT_MODEL="demo-model")

    with session_client(demo.url, user) as client:
        assert options_of(client.get("/").text) == ["demo-model"]
        assert client.get("/api/models").json()["models"] == ["demo-model"]
        refused = post(client, message="hello", model="fake-model")
        assert refused.json()["error"]["allowed"] == ["demo-model"]


@pytest.fixture
def upstream_models(own_upstream):
    """An upstream of the test's own, whose model list the test sets."""
    return own_upstream


def test_without_chat_models_the_upstreams_list_is_offered_cached_and_refreshed(
    start_server, upstream_models, user, transactional_db
):
    upstream_models.models = ["zeta-model", "fake-model", "alpha-model"]
    site = start_server(
        f"models-discovered-{uuid.uuid4().hex[:6]}",
        CHAT_PROVIDER="openai",
        OPENAI_BASE_URL=upstream_models.base_url,
        CHAT_MODELS_CACHE_SECONDS="2",
        CHAT_AUTO_TITLES="0",
    )
    fetched_before = len(upstream_models.model_list_requests)

    with session_client(site.url, user) as client:
        # The default first, then the upstream's others in order of name.
        assert options_of(client.get("/").text) == ["fake-model", "alpha-model", "zeta-model"]
        for _ in range(3):
            trigger = f"discovered {uuid.uuid4().hex}"
            response = post(client, message=trigger, model="alpha-model")
            assert response.status_code == 200, response.text
            assert streamed_model(upstream_models, trigger) == "alpha-model"
        assert post(client, message="not listed", model="beta-model").status_code == 400
        # One fetch served the page and every stream.
        assert len(upstream_models.model_list_requests) == fetched_before + 1

        upstream_models.models = ["fake-model", "beta-model"]

        def beta_on_offer() -> bool:
            response = post(client, message=f"beta {uuid.uuid4().hex}", model="beta-model")
            return response.status_code == 200

        wait_for(beta_on_offer, timeout=15, step=0.2)
        assert options_of(client.get("/").text) == ["fake-model", "beta-model"]
    fetches = len(upstream_models.model_list_requests) - fetched_before
    assert 2 <= fetches <= 3, fetches


def test_when_the_list_cannot_be_fetched_chat_model_alone_is_offered_and_logged_once(
    start_server, upstream_models, user, transactional_db
):
    upstream_models.models_status = 500
    site = start_server(
        f"models-failing-{uuid.uuid4().hex[:6]}",
        CHAT_PROVIDER="openai",
        OPENAI_BASE_URL=upstream_models.base_url,
        CHAT_MODELS_CACHE_SECONDS="0.5",
        CHAT_AUTO_TITLES="0",
    )
    fetched_before = len(upstream_models.model_list_requests)

    with session_client(site.url, user) as client:
        assert options_of(client.get("/").text) == ["fake-model"]
        trigger = f"fallback {uuid.uuid4().hex}"
        response = post(client, message=trigger)
        assert response.status_code == 200
        assert streamed_model(upstream_models, trigger) == "fake-model"

        def fetched_twice_more() -> bool:
            client.get("/")
            return len(upstream_models.model_list_requests) >= fetched_before + 3

        wait_for(fetched_twice_more, timeout=15, step=0.2)  # the cache is short here
        refused = post(client, message="elsewhere", model="zeta-model")
        assert refused.status_code == 400
        assert refused.json()["error"]["allowed"] == ["fake-model"]

    log = site.log()
    assert log.count("the model list could not be fetched") == 1
    assert "GET /models failed (InternalServerError, status 500)" in log
    assert "upstream failure" not in log
