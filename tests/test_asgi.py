"""The ASGI handler: each request's thread is reused and handed back between calls, a
streaming response lets go of its request and head while it streams, and each request is freed
when it ends instead of being left to the garbage collector.

Run in-process, as Django's own ASGI tests do: the server process's garbage is not visible
from here. The collector is off while the request runs, so whatever a reference cycle keeps
alive is still there to be found afterwards.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from collections.abc import Callable
from urllib.parse import urlencode

import pytest
from django.conf import settings
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIRequest
from django.core.signals import request_started
from django.db import close_old_connections, reset_queries

from chatsite.asgi import application, holds_a_connection
from conversations import limits, redis_client
from conversations.models import Message
from conversations.tokens import api_token_create
from tests.loops import run_in_new_loop

LIMIT_CLIENTS = (redis_client.redis_client, limits.request_counter, limits.stream_slots)


@pytest.fixture(autouse=True)
def limits_built_on_each_loop():
    """The limits' Redis client belongs to the event loop it was made on; each test runs a
    loop of its own."""
    for factory in LIMIT_CLIENTS:
        factory.cache_clear()
    yield
    for factory in LIMIT_CLIENTS:
        factory.cache_clear()


@pytest.fixture
def collector_off():
    gc.collect()
    gc.disable()
    yield
    gc.enable()


def unreachable_objects() -> list:
    """What only reference cycles kept alive since the collector was turned off."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return list(gc.garbage)
    finally:
        gc.garbage.clear()
        gc.set_debug(0)


async def exchange(
    path: str,
    query: dict,
    token: str,
    *,
    leave_after_first_token: bool,
    leave_while_headers_are_sent: bool = False,
    on_first_token: Callable[[], None] | None = None,
    cookie: str = "",
) -> list:
    """One request through the ASGI application; the client disconnects once the response
    is complete or, if asked, as soon as the first token arrives, or while the response's
    headers are being sent (the server's ``send`` waits, as on a full socket buffer)."""
    sent: list[dict] = []
    client_gone = asyncio.Event()
    request_read = False

    async def receive() -> dict:
        nonlocal request_read
        if not request_read:
            request_read = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await client_gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)
        if leave_while_headers_are_sent:
            client_gone.set()
            await asyncio.Event().wait()
        if message["type"] != "http.response.body":
            return
        first_token = b"data:" in message.get("body", b"") and not any(
            b"data:" in earlier.get("body", b"") for earlier in sent[:-1]
        )
        if first_token and on_first_token is not None:
            on_first_token()
        if (first_token and leave_after_first_token) or not message.get("more_body"):
            client_gone.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": urlencode(query).encode(),
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            *([(b"authorization", f"Bearer {token}".encode())] if token else []),
            *([(b"cookie", f"sessionid={cookie}".encode())] if cookie else []),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("testserver", 80),
    }
    await application(scope, receive, send)
    return sent


def left_behind(garbage: list) -> list[str]:
    return [
        type(item).__name__ for item in garbage if isinstance(item, ASGIRequest | RequestAborted)
    ]


def test_a_finished_request_leaves_no_reference_cycle_behind(user, collector_off):
    _, token = api_token_create(owner=user)

    sent = run_in_new_loop(exchange("/api/conversations", {}, token, leave_after_first_token=False))

    assert sent[0]["status"] == 200
    assert left_behind(unreachable_objects()) == []


def test_a_stream_the_client_left_leaves_no_reference_cycle_behind(user, collector_off):
    _, token = api_token_create(owner=user)

    sent = run_in_new_loop(
        exchange("/api/chat/stream", {"message": "hello"}, token, leave_after_first_token=True)
    )

    assert sent[0]["status"] == 200
    assert Message.objects.get(role="assistant").status == Message.Status.CANCELLED
    assert left_behind(unreachable_objects()) == []


def test_a_stream_the_client_left_before_its_headers_were_sent_is_stopped_and_saved(user):
    """Django drops such a response without iterating its body: the reply is still stopped,
    saved and its stream slot given back."""
    _, token = api_token_create(owner=user)

    async def leave_then_take_every_slot():
        sent = await exchange(
            "/api/chat/stream",
            {"message": "hello"},
            token,
            leave_after_first_token=False,
            leave_while_headers_are_sent=True,
        )
        slots = limits.stream_slots()
        taken = [
            await asyncio.wait_for(slots.acquire(f"user:{user.pk}"), timeout=2)
            for _ in range(settings.CHAT_STREAMS_PER_USER)
        ]
        for slot in taken:
            await slot.release()
        return sent

    sent = run_in_new_loop(leave_then_take_every_slot())

    assert [message["type"] for message in sent] == ["http.response.start"]
    reply = Message.objects.get(role="assistant")
    assert reply.status == Message.Status.CANCELLED


@pytest.fixture
def request_threads():
    """The thread each request's thread-sensitive work ran on, in order."""
    idents: list[int] = []

    def record(**kwargs) -> None:
        idents.append(threading.get_native_id())

    request_started.connect(record)
    yield idents
    request_started.disconnect(record)


def test_requests_one_after_another_reuse_one_thread(user, request_threads):
    _, token = api_token_create(owner=user)

    for _ in range(3):
        run_in_new_loop(exchange("/api/conversations", {}, token, leave_after_first_token=False))

    assert len(request_threads) == 3
    assert len(set(request_threads)) == 1
    assert threading.get_native_id() not in request_threads


def test_requests_at_the_same_time_each_have_a_thread_of_their_own(user, request_threads):
    """Two requests whose thread-sensitive work overlaps run it on two threads: each waits
    in request_started for the other to arrive, which one shared thread could never do."""
    _, token = api_token_create(owner=user)
    both_arrived = threading.Barrier(2, timeout=5)

    def wait_for_the_other(**kwargs) -> None:
        both_arrived.wait()

    request_started.connect(wait_for_the_other)
    try:
        responses = run_in_new_loop(two_streams(token))
    finally:
        request_started.disconnect(wait_for_the_other)

    assert [sent[0]["status"] for sent in responses] == [200, 200]
    assert len(set(request_threads)) == 2


def test_streams_that_are_open_at_once_hold_no_thread_while_they_stream(user, request_threads):
    """Each stream starts while the ones before it still stream: they all run their
    thread-sensitive work on one thread, handed back as each one's body starts."""
    _, token = api_token_create(owner=user)
    lent_at_first_token: list[int] = []

    async def each_open_while_the_next_starts() -> list:
        streams = []
        for number in range(3):
            started = asyncio.Event()

            def first_token(started: asyncio.Event = started) -> None:
                lent_at_first_token.append(application.threads.lent)
                started.set()

            streams.append(
                asyncio.ensure_future(
                    exchange(
                        "/api/chat/stream",
                        {"message": f"hello {number}"},
                        token,
                        leave_after_first_token=False,
                        on_first_token=first_token,
                    )
                )
            )
            await started.wait()
        return await asyncio.gather(*streams)

    responses = run_in_new_loop(each_open_while_the_next_starts())

    assert [sent[0]["status"] for sent in responses] == [200, 200, 200]
    assert lent_at_first_token == [0, 0, 0]
    assert len(request_threads) == 3
    assert len(set(request_threads)) == 1
    assert application.threads.lent == 0


def test_a_request_waiting_between_its_thread_sensitive_calls_holds_no_thread(transactional_db):
    """A call that leaves no database connection open hands the thread straight back, so a
    request waiting on the loop (Redis, the upstream) holds none; one that leaves a connection
    open keeps its thread until the connection is closed (it belongs to that thread)."""
    from asgiref.sync import ThreadSensitiveContext, sync_to_async
    from django.db import connections

    from chatsite.asgi import RequestThread, RequestThreads

    threads = RequestThreads()
    thread = RequestThread(threads)
    seen: list[tuple[str, bool, int]] = []

    def note(step: str) -> None:
        seen.append((step, thread.holds_a_thread, threads.lent))

    async def calls() -> None:
        async with ThreadSensitiveContext(executor=thread):
            await sync_to_async(lambda: None)()
            note("after a call that opened nothing")
            await sync_to_async(lambda: connections["default"].ensure_connection())()
            note("after a call that opened a connection")
            await sync_to_async(lambda: None)()
            note("after another call, the connection still open")
            await sync_to_async(lambda: connections["default"].close())()
            note("after the connection was closed")
        thread.give_back()

    run_in_new_loop(calls())

    assert seen == [
        ("after a call that opened nothing", False, 0),
        ("after a call that opened a connection", True, 1),
        ("after another call, the connection still open", True, 1),
        ("after the connection was closed", False, 0),
    ]


def start_serve_and_stop(while_serving: Callable[[], None] = lambda: None) -> list[str]:
    """The application's ASGI lifespan, as uvicorn drives it: startup, ``while_serving``
    once startup is answered, then shutdown; the answers it sent."""
    answers: list[str] = []

    async def serve_and_stop() -> None:
        messages: asyncio.Queue[dict] = asyncio.Queue()
        started = asyncio.Event()

        async def send(message: dict) -> None:
            answers.append(message["type"])
            started.set()

        serving = asyncio.ensure_future(application({"type": "lifespan"}, messages.get, send))
        await messages.put({"type": "lifespan.startup"})
        await started.wait()
        while_serving()
        await messages.put({"type": "lifespan.shutdown"})
        await serving

    run_in_new_loop(serve_and_stop())
    return answers


def test_a_serving_worker_leaves_request_started_without_djangos_receivers_until_it_stops():
    """A signal with no receivers costs no hop to a thread before every view; the worker's
    lifespan takes Django's two away while it serves and gives them back when it stops."""
    listened: dict[str, bool] = {"before": request_started.has_listeners()}

    def listening() -> None:
        listened["serving"] = request_started.has_listeners()

    answers = start_serve_and_stop(listening)

    assert answers == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert listened == {"before": True, "serving": False}
    assert {r() for _, r, _ in request_started.receivers} == {close_old_connections, reset_queries}


def test_startup_work_that_fails_or_hangs_is_logged_and_the_worker_serves_anyway(
    monkeypatch, caplog
):
    """A database or Redis out of reach at startup does not keep the worker from serving: its
    requests get their 503s, and /readyz says why."""
    from chatsite import lifecycle

    done: list[str] = []

    async def fails() -> None:
        raise OSError("connection refused")

    async def hangs() -> None:
        await asyncio.sleep(60)

    async def prepares() -> None:
        done.append("prepared")

    monkeypatch.setattr(
        lifecycle, "_AT_STARTUP", [(fails, "reach a"), (hangs, "reach b"), (prepares, "prepare")]
    )
    monkeypatch.setattr(lifecycle, "STARTUP_SECONDS", 0.2)

    with caplog.at_level(logging.WARNING, logger="chatsite.lifecycle"):
        answers = start_serve_and_stop()

    assert answers == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert done == ["prepared"]
    failures = [r for r in caplog.records if r.name == "chatsite.lifecycle"]
    assert [r.getMessage() for r in failures] == [
        "could not reach a before serving (OSError); serving anyway",
        "could not reach b before serving (TimeoutError); serving anyway",
    ]
    assert [r.exc_info for r in failures] == [None, None]  # an outage, not a bug


def test_threads_given_back_hold_no_database_connection(user, make_user, transactional_db):
    """Why request_started's close_old_connections has nothing to close in a serving worker:
    whatever requests did on their threads (the ORM in a page, a stream's rows, a refusal), a
    thread handed back to RequestThreads holds no database connection."""
    from django.test import Client

    _, token = api_token_create(owner=user)
    session = Client()
    session.force_login(make_user("page-reader"))
    cookie = session.cookies["sessionid"].value

    async def requests() -> None:
        await exchange("/api/conversations", {}, token, leave_after_first_token=False)
        await exchange(
            "/api/chat/stream", {"message": "hello"}, token, leave_after_first_token=True
        )
        await exchange("/api/chat/stream", {"message": "hi"}, token, leave_after_first_token=False)
        await exchange("/", {}, "", leave_after_first_token=False, cookie=cookie)
        await exchange("/api/messages/999999/stream", {}, token, leave_after_first_token=False)

    run_in_new_loop(requests())

    idle = list(application.threads._idle)
    assert idle
    assert [thread.submit(holds_a_connection).result() for thread in idle] == [False] * len(idle)


def test_a_streaming_response_is_sent_as_djangos_own_send_response_sends_it():
    """The handler sends a streaming response itself (to let go of what it no longer needs
    while it streams): the ASGI messages are exactly Django's, head, cookies and chunks."""
    from django.core.handlers.asgi import ASGIHandler
    from django.http import StreamingHttpResponse

    from chatsite.lifecycle import CURRENT, Handling

    async def parts():
        yield b"data: one\n\n"
        yield b""
        yield b"x" * (application.chunk_size * 2 + 5)
        yield b"data: last\n\n"

    def response() -> StreamingHttpResponse:
        made = StreamingHttpResponse(parts(), content_type="text/event-stream", status=201)
        made["X-Message-Id"] = "42"
        made["Cache-Control"] = "no-cache"
        made.set_cookie("seen", "yes", httponly=True)
        return made

    async def sent_by(send_response) -> list:
        messages: list = []

        async def send(message) -> None:
            messages.append(message)

        reset = CURRENT.set(Handling())
        try:
            await send_response(response(), send)
        finally:
            CURRENT.reset(reset)
        return messages

    djangos = run_in_new_loop(sent_by(lambda r, s: ASGIHandler.send_response(application, r, s)))
    ours = run_in_new_loop(sent_by(application.send_response))

    assert ours == djangos
    assert [m["type"] for m in ours].count("http.response.body") == 7


def test_once_a_streams_head_is_sent_its_request_and_response_headers_are_let_go(user):
    """While the reply streams, the request keeps only what its ``close`` needs (its body
    file, closed) and the response no header fields: each open stream holds less."""
    _, token = api_token_create(owner=user)
    seen: dict = {}

    def first_token() -> None:
        from conversations.sse import EventStreamResponse

        requests = [o for o in gc.get_objects() if isinstance(o, ASGIRequest)]
        responses = [o for o in gc.get_objects() if isinstance(o, EventStreamResponse)]
        seen["request keys"] = [sorted(vars(request)) for request in requests]
        seen["body closed"] = [request._stream.closed for request in requests]
        seen["response headers"] = [len(response.headers) for response in responses]

    sent = run_in_new_loop(
        exchange(
            "/api/chat/stream",
            {"message": "hello"},
            token,
            leave_after_first_token=False,
            on_first_token=first_token,
        )
    )

    assert sent[0]["status"] == 200
    assert (b"Content-Type", b"text/event-stream") in sent[0]["headers"]
    assert seen == {
        "request keys": [["_stream"]],
        "body closed": [True],
        "response headers": [0],
    }
    assert Message.objects.get(role="assistant").status == Message.Status.COMPLETE


async def two_streams(token: str) -> list:
    query = {"message": "hello"}
    return await asyncio.gather(
        *(
            exchange("/api/chat/stream", query, token, leave_after_first_token=True)
            for _ in range(2)
        )
    )


def test_djangos_read_body_still_has_the_shape_the_handler_overrides():
    """chatsite.asgi overrides ASGIHandler.read_body (undocumented) to refuse a body over
    CHAT_MAX_BODY_BYTES as it arrives; if Django renames it or changes what it takes, the
    override would silently never run."""
    import inspect

    from django.core.handlers.asgi import ASGIHandler

    assert inspect.iscoroutinefunction(ASGIHandler.read_body), "ASGIHandler.read_body changed"
    assert list(inspect.signature(ASGIHandler.read_body).parameters) == ["self", "receive"], (
        "ASGIHandler.read_body takes other arguments now: update chatsite.asgi's override"
    )
    source = inspect.getsource(ASGIHandler.handle)
    assert "self.read_body(receive)" in source, "ASGIHandler.handle no longer calls read_body"


def test_djangos_send_response_still_has_the_shape_the_handler_overrides():
    """chatsite.asgi overrides ASGIHandler.send_response (undocumented) to hand a streaming
    request's thread and database connections back before the body streams; renamed or
    called differently, the override would silently never run and each open stream would
    hold a thread and a pooled connection again."""
    import inspect

    from django.core.handlers.asgi import ASGIHandler

    assert inspect.iscoroutinefunction(ASGIHandler.send_response), "send_response changed"
    assert list(inspect.signature(ASGIHandler.send_response).parameters) == [
        "self",
        "response",
        "send",
    ], "ASGIHandler.send_response takes other arguments now: update chatsite.asgi's override"
    source = inspect.getsource(ASGIHandler.handle)
    assert "self.send_response(" in source, "ASGIHandler.handle no longer calls send_response"
