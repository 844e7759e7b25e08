"""Services in-process against the test database: one rule for prompts, one wording for an
interrupted reply, and the cache the sign-in limits count in."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.core.cache.backends.redis import RedisCache
from django.template.loader import render_to_string

from conversations.models import Message
from conversations.services import (
    INTERRUPTED_CODE,
    INTERRUPTED_MESSAGE,
    ChatRequest,
    new_conversation_prompt,
    prompt_for_conversation,
    reply_open,
)

HISTORY = [
    {"role": "user", "content": "first"},
    {"role": "assistant", "content": ""},
    {"role": "assistant", "content": "an answer"},
]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("system_prompt", "system"),
    [(None, "The site's prompt."), ("", None), ("Be brief.", "Be brief.")],
    ids=["the site's", "none", "the client's"],
)
def test_a_new_conversations_prompt_is_the_one_its_saved_transcript_gives(
    django_user_model, system_prompt, system
):
    """The prompt sent before the rows are written is the one a follow-up reads back."""
    user = django_user_model.objects.create(username="pia")
    chat_request = ChatRequest(message="and now?", system_prompt=system_prompt, history=HISTORY)

    opened = reply_open(
        user=user,
        chat_request=chat_request,
        default_model="m1",
        default_system_prompt="The site's prompt.",
    )

    expected = [
        *([{"role": "system", "content": system}] if system else []),
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": "and now?"},
    ]
    assert new_conversation_prompt(chat_request, "The site's prompt.") == expected
    assert opened.prompt == expected
    assert prompt_for_conversation(opened.conversation) == expected


def test_an_interrupted_reply_is_shown_in_the_words_saved_with_it():
    message = Message(
        pk=1,
        role=Message.Role.ASSISTANT,
        status=Message.Status.INTERRUPTED,
        content="part",
        error_code=INTERRUPTED_CODE,
        error_message=INTERRUPTED_MESSAGE,
    )

    page = render_to_string("conversations/_message.html", {"message": message})

    assert INTERRUPTED_MESSAGE == "The server stopped before this reply finished."
    assert (
        '<p class="message-note failed">Interrupted: the server stopped before this reply '
        "finished.</p>"
    ) in page


def test_the_sign_in_counters_cache_objects_share_one_redis_pool(redis_url):
    """django-ratelimit counts sign-in and sign-up attempts in Django's cache (its default
    cache alias), and Django makes a cache object per async context: with chatsite.cache's
    pool class they all share one pool. (The pool is read through RedisCache's private
    ``_cache._get_connection_pool``.)"""
    assert getattr(settings, "RATELIMIT_USE_CACHE", "default") == "default"
    options = {"OPTIONS": {"pool_class": "chatsite.cache.SharedConnectionPool"}}
    one, two = RedisCache(redis_url, options), RedisCache(redis_url, options)

    assert one._cache._get_connection_pool(True) is two._cache._get_connection_pool(True)
