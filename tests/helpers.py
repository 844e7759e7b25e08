"""What the tests share: waiting on state, signing in, API tokens, and streams left open.

Nothing here sleeps to order events: ``wait_for`` polls the state a test waits for, and fails
naming it when it never comes.
"""

from __future__ import annotations

import asyncio
import io
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TypeVar

import httpx
from django.core.management import call_command
from django.db import connection, transaction
from django.test import Client as DjangoClient
from django.test.utils import CaptureQueriesContext
from django.utils.crypto import get_random_string

from conversations.models import Conversation, Message
from tests.sse import Frame, iter_frames

T = TypeVar("T")


# -- waiting on state ---------------------------------------------------------------------


def wait_for(predicate: Callable[[], T], timeout: float = 5.0, step: float = 0.01) -> T:
    """The first truthy value of ``predicate()``, polled every ``step`` seconds; an
    AssertionError naming it if none comes within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{_name(predicate)} not met within {timeout}s")
        time.sleep(step)


async def await_for(predicate: Callable[[], T], timeout: float = 5.0, step: float = 0.01) -> T:
    """``wait_for`` inside a running event loop (which goes on running meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{_name(predicate)} not met within {timeout}s")
        await asyncio.sleep(step)


def _name(predicate: Callable) -> str:
    name = getattr(predicate, "__qualname__", repr(predicate))
    return "the condition" if "<lambda>" in name else name


def wait_for_status(message_id: int, timeout: float = 5.0) -> Message:
    """The reply once it is no longer streaming (it has been saved with its final status)."""

    def saved() -> Message | None:
        message = Message.objects.get(pk=message_id)
        return None if message.status == Message.Status.STREAMING else message

    try:
        return wait_for(saved, timeout=timeout, step=0.02)
    except AssertionError:
        raise AssertionError(f"message {message_id} is still streaming after {timeout}s") from None


def interrupt_once_its_producer_is_gone(message_id: int) -> Message:
    """Run ``interrupt_stale_replies --older-than 0`` until it marks the reply (with Redis, a
    killed server's word that its reply is alive lasts three heartbeats)."""

    def interrupted() -> Message | None:
        call_command("interrupt_stale_replies", older_than=0, stdout=io.StringIO())
        message = Message.objects.get(pk=message_id)
        return message if message.status == Message.Status.INTERRUPTED else None

    return wait_for(interrupted, timeout=10, step=0.1)


@contextmanager
def conversation_rows_locked():
    """Hold the conversations table, so a server's insert into it waits until the block ends."""
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("LOCK TABLE conversations_conversation IN EXCLUSIVE MODE")
        else:  # SQLite's write lock, taken by atomic()'s BEGIN IMMEDIATE
            cursor.execute("UPDATE conversations_conversation SET title = title WHERE id = -1")
        yield


# -- signing in ---------------------------------------------------------------------------


def session_client(base_url: str, user) -> httpx.Client:
    """An HTTP client signed in as ``user`` with a session cookie and a CSRF token, sending
    ``Sec-Fetch-Site: same-origin`` as a browser does for a request from the site's own page."""
    django_client = DjangoClient()
    django_client.force_login(user)
    csrf_token = get_random_string(32)
    client = httpx.Client(
        base_url=base_url,
        headers={"X-CSRFToken": csrf_token, "Sec-Fetch-Site": "same-origin"},
        timeout=httpx.Timeout(15.0),
    )
    client.cookies.set("sessionid", django_client.cookies["sessionid"].value)
    client.cookies.set("csrftoken", csrf_token)
    return client


def client_from(base_url: str, address: str) -> httpx.Client:
    """An HTTP client whose requests come from ``address`` (any 127.0.0.0/8 address works):
    a client IP of its own, for the per-IP limits."""
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=base_url, transport=transport, timeout=15)


CSRF_FIELD = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def post_form(client: httpx.Client, path: str, **fields: str) -> httpx.Response:
    """Fetch the form at ``path`` and post ``fields`` with its CSRF token, as a browser does."""
    page = client.get(path)
    assert page.status_code == 200, page.text
    token = CSRF_FIELD.search(page.text).group(1)
    return client.post(path, data={**fields, "csrfmiddlewaretoken": token})


def sign_in(
    client: httpx.Client, username: str, password: str, path: str = "/accounts/login/"
) -> httpx.Response:
    """Post the sign-in form; the answer (302 when signed in)."""
    return post_form(client, path, username=username, password=password)


def sign_up(client: httpx.Client, username: str, password: str) -> httpx.Response:
    """Post the sign-up form; the answer (302 when the account was made)."""
    return post_form(
        client, "/accounts/signup/", username=username, password1=password, password2=password
    )


def signed_in_client(base_url: str, username: str, password: str) -> httpx.Client:
    """A client signed in through the real form, ready to call the API with its session."""
    client = httpx.Client(base_url=base_url, timeout=15)
    response = sign_in(client, username, password)
    assert response.status_code == 302, response.text
    client.headers["X-CSRFToken"] = client.cookies["csrftoken"]
    return client


# -- API tokens ---------------------------------------------------------------------------


def create_token(username: str, name: str = "cli") -> str:
    """A new API token for ``username``, made by the management command (its raw value)."""
    out = io.StringIO()
    call_command("create_api_token", username, "--name", name, stdout=out, stderr=io.StringIO())
    return out.getvalue().strip().splitlines()[-1]


def token_client(server, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=15
    )


# -- streams ------------------------------------------------------------------------------


@dataclass
class OpenStream:
    """A stream left open with its headers read. Read ``frames`` (one iterator, kept: a
    dropped one would close the response) or ``read_some``; ``close`` to leave."""

    response: httpx.Response
    frames: Iterator[Frame] = field(init=False)

    def __post_init__(self) -> None:
        self.frames = iter_frames(self.response)

    @property
    def status_code(self) -> int:
        return self.response.status_code

    @property
    def headers(self) -> httpx.Headers:
        return self.response.headers

    @property
    def message_id(self) -> int:
        return int(self.response.headers["x-message-id"])

    def data_frames(self) -> Iterator[Frame]:
        """The frames with data (not comments) as they come."""
        return (frame for frame in self.frames if frame.has_data)

    def read_some(self, count: int) -> list[Frame]:
        """The next ``count`` frames with data; the response is then closed (the client
        leaves)."""
        frames = []
        for frame in self.data_frames():
            frames.append(frame)
            if len(frames) == count:
                break
        self.close()
        return frames

    def close(self) -> None:
        self.response.close()


def open_response(client: httpx.Client, method: str, path: str, **request) -> OpenStream:
    """Any streaming endpoint, left open (``request``: httpx's ``params``, ``json``,
    ``headers``)."""
    return OpenStream(client.send(client.build_request(method, path, **request), stream=True))


def open_stream(
    client: httpx.Client, message: str, *, method: str = "POST", **fields
) -> OpenStream:
    """A reply asked for on ``/api/chat/stream`` (POST: a JSON body; GET: the query string)
    with ``message`` and any other ``fields``, left open."""
    body = {"message": message, **fields}
    if method == "GET":
        return open_response(client, "GET", "/api/chat/stream", params=body)
    return open_response(client, method, "/api/chat/stream", json=body)


@dataclass
class BackgroundStream:
    """A reply streaming to a client whose frames a thread reads into ``frames`` (a broken
    connection is recorded there as the exception that broke it)."""

    stream: OpenStream
    frames: list
    reader: threading.Thread
    client: httpx.Client

    @property
    def response(self) -> httpx.Response:
        return self.stream.response

    def finish(self) -> None:
        self.reader.join(5)
        self.client.close()


def read_in_background(stream: OpenStream, client: httpx.Client) -> BackgroundStream:
    """Read ``stream``'s frames in a thread of their own."""
    frames: list = []

    def read() -> None:
        try:
            frames.extend(stream.frames)
        except httpx.TransportError as broken:
            frames.append(broken)

    reader = threading.Thread(target=read)
    reader.start()
    return BackgroundStream(stream, frames, reader, client)


def reply_streaming_in(server, fake_upstream, token: str, message: str) -> BackgroundStream:
    """A long reply streaming from ``server`` to a token client, five frames in."""
    fake_upstream.script(message, tokens=[f"w{i} " for i in range(500)], interval=0.02)
    client = token_client(server, token)
    background = read_in_background(open_stream(client, message), client)
    wait_for(lambda: len(background.frames) >= 5)
    return background


# -- rate-limit windows -------------------------------------------------------------------


def in_one_window(
    attempt: Callable[[int], list[httpx.Response]], *, tries: int = 3
) -> list[httpx.Response]:
    """The responses of ``attempt(n)`` once they were all counted in one rate-limit window.

    The limits count in fixed windows of the wall clock, so a minute can end in the middle of
    a test. The server says where each request fell: ``RateLimit-Reset``, the seconds left in
    its window, only falls within a window and jumps up when a new one starts. On a jump the
    attempt is made again with ``n + 1``, which must count against fresh keys (another user,
    another client address) as the keys of the first attempt are partly counted already.
    The header counts whole seconds, so the window must be longer than a second and than an
    attempt (the tests' windows are minutes).
    """
    for n in range(tries):
        responses = attempt(n)
        resets = [int(response.headers["ratelimit-reset"]) for response in responses]
        if all(earlier >= later for earlier, later in pairwise(resets)):
            return responses
    raise AssertionError(f"a rate-limit window ended during each of {tries} attempts")


# -- in-process requests and saved transcripts ------------------------------------------------


def count_queries(client: DjangoClient, path: str) -> int:
    """The queries an in-process ``GET path`` makes, counted in a thread of its own: a browser
    test earlier in the session leaves Playwright's event loop running in this one, and
    Django's test client cannot run its middlewares' sync hooks under a running loop."""

    def count() -> int:
        try:
            with CaptureQueriesContext(connection) as queries:
                assert client.get(path).status_code == 200
            return len(queries)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(count).result()


def transcript_create(conversation: Conversation, *turns: dict) -> list[Message]:
    """Save ``turns`` (Message fields: role, content, status…) in order, each the child of the
    one before (the first follows the conversation's newest message, if any)."""
    last = conversation.messages.order_by("created_at", "id").last()
    saved = []
    for fields in turns:
        last = Message.objects.create(conversation=conversation, parent=last, **fields)
        saved.append(last)
    return saved


def asked(content: str, **fields) -> dict:
    return {"role": "user", "content": content, **fields}


def answered(content: str, **fields) -> dict:
    return {"role": "assistant", "content": content, **fields}
