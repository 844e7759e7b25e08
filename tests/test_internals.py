"""Guards: each private or undocumented API the project relies on (docs/internals.md) still has
the shape it is used with. Each test names the API; when one fails after an upgrade, read its
entry in docs/internals.md, and serve with CHAT_FAST_PATH=0 (stock Django, the ORM, httpx's
transport) until the shortcut is mended.

These check shapes (signatures, attributes, the call sites in the library's own source) and
make the exact call the project makes; the behaviour each shortcut exists for is tested where
the behaviour is (named in docs/internals.md)."""

from __future__ import annotations

import inspect
import io
import re
import sys
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.contrib.messages.middleware import MessageMiddleware as StockMessageMiddleware
from django.contrib.messages.storage.base import BaseStorage
from django.contrib.sessions.backends.base import SessionBase
from django.contrib.sessions.middleware import SessionMiddleware as StockSessionMiddleware
from django.core.cache.backends.redis import RedisCacheClient
from django.core.checks.security import base as security_checks
from django.core.checks.security import csrf as csrf_checks
from django.core.handlers.asgi import ASGIHandler, ASGIRequest
from django.db import connection, connections
from django.db.models.expressions import Col
from django.http import HttpResponse
from django.middleware.csrf import CsrfViewMiddleware as StockCsrfViewMiddleware
from django.test import RequestFactory
from django.utils.crypto import get_random_string
from django.utils.deprecation import MiddlewareMixin
from whitenoise.middleware import WhiteNoiseMiddleware

from chatsite import middleware
from conversations import asyncdb, tokens
from conversations.models import Message
from conversations.providers.openai_compatible import NoCookies, UpstreamHttpClient
from conversations.statements import postgresql
from tests.loops import run_in_new_loop

on_postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="a PostgreSQL-only shortcut (make test and CI run on PostgreSQL)",
)


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def source(function) -> str:
    return inspect.getsource(function)


# chatsite/asgi.py: ChatASGIHandler ------------------------------------------------------------


def test_asgi_handler_handle_is_awaited_by_call_in_djangos_thread_sensitive_context():
    assert inspect.iscoroutinefunction(ASGIHandler.handle), "ASGIHandler.handle is not async"
    assert parameters(ASGIHandler.handle) == ["self", "scope", "receive", "send"], (
        "ASGIHandler.handle takes other arguments: update ChatASGIHandler.handle"
    )
    assert "await self.handle(scope, receive, send)" in source(ASGIHandler.__call__), (
        "ASGIHandler.__call__ no longer awaits self.handle: ChatASGIHandler.handle (request "
        "threads, the 413 on Content-Length, freeing requests) would never run"
    )
    assert "ThreadSensitiveContext()" in source(ASGIHandler.__call__)


def test_asgi_handler_create_request_returns_a_request_and_no_error_response():
    assert parameters(ASGIHandler.create_request) == ["self", "scope", "body_file"]
    assert "self.create_request(scope, body_file)" in source(ASGIHandler.handle), (
        "ASGIHandler.handle no longer calls create_request: ChatASGIHandler would not see the "
        "requests it frees"
    )
    scope = {"type": "http", "method": "GET", "path": "/", "query_string": b"", "headers": []}

    request, error_response = ASGIHandler.create_request(ASGIHandler(), scope, io.BytesIO())

    assert isinstance(request, ASGIRequest) and error_response is None


def test_asgi_handler_listen_for_disconnect_runs_as_a_task_beside_the_response():
    """ChatASGIHandler.listen_for_disconnect returns where Django's raises RequestAborted:
    Django's handle treats both the same only while it waits for the first task to finish."""
    assert parameters(ASGIHandler.listen_for_disconnect) == ["self", "receive"]
    handle = source(ASGIHandler.handle)
    assert "asyncio.create_task(self.listen_for_disconnect(receive))" in handle
    assert "return_when=asyncio.FIRST_COMPLETED" in handle, (
        "ASGIHandler.handle no longer stops the response when the disconnect task ends: "
        "ChatASGIHandler.listen_for_disconnect must raise RequestAborted as Django's does"
    )


def test_thread_sensitive_context_takes_an_executor_of_the_callers():
    assert "executor" in inspect.signature(ThreadSensitiveContext).parameters, (
        "asgiref's ThreadSensitiveContext(executor=…) is gone: ChatASGIHandler cannot reuse "
        "request threads"
    )

    def thread_name() -> str:
        return threading.current_thread().name

    async def where() -> str:
        with ThreadPoolExecutor(1, thread_name_prefix="given") as executor:
            async with ThreadSensitiveContext(executor=executor):
                return await sync_to_async(thread_name)()

    assert run_in_new_loop(where()).startswith("given"), (
        "thread-sensitive calls no longer run on the ThreadSensitiveContext's executor"
    )


def test_connections_all_can_skip_connections_this_context_never_used():
    assert "initialized_only" in inspect.signature(connections.all).parameters
    for wrapper in connections.all(initialized_only=True):
        assert hasattr(wrapper, "in_atomic_block") and hasattr(wrapper, "connection"), (
            "a database wrapper lost in_atomic_block or connection: ChatASGIHandler."
            "send_response cannot tell whether the request's connections may be closed"
        )


# chatsite/middleware.py: hooks on the event loop ---------------------------------------------


def test_middleware_mixin_calls_acall_in_async_mode_and_it_runs_only_the_two_hooks():
    call = source(MiddlewareMixin.__call__)
    assert "if self.async_mode:" in call and "return self.__acall__(request)" in call, (
        "MiddlewareMixin.__call__ no longer dispatches to __acall__: InlineHooksMixin's "
        "__acall__ would never run (every hook back in a thread)"
    )
    acall = source(MiddlewareMixin.__acall__)
    assert acall.count("sync_to_async(") == 2, (
        "MiddlewareMixin.__acall__ does more than run process_request and process_response "
        "in threads: InlineHooksMixin.__acall__ must do it too"
    )
    assert "self.process_request" in acall and "self.process_response" in acall


def test_session_save_condition_is_modified_or_save_every_request_and_not_empty():
    """SessionMiddleware.response_needs_thread repeats Django's condition for saving."""
    response = source(StockSessionMiddleware.process_response)
    assert "(modified or settings.SESSION_SAVE_EVERY_REQUEST) and not empty" in response, (
        "SessionMiddleware.process_response saves on another condition now: update "
        "chatsite.middleware.SessionMiddleware.response_needs_thread"
    )
    assert "request.session.is_empty()" in response
    assert callable(SessionBase.is_empty)


def test_message_storage_is_request_messages_and_saved_only_when_used_or_added_to():
    """MessageMiddleware.response_needs_thread reads request._messages.used / .added_new."""
    assert "request._messages = default_storage(request)" in source(
        StockMessageMiddleware.process_request
    )
    assert "request._messages.update(response)" in source(StockMessageMiddleware.process_response)
    update = source(BaseStorage.update)
    assert "if self.used:" in update and "elif self.added_new:" in update, (
        "message storage is saved on another condition now: update "
        "chatsite.middleware.MessageMiddleware.response_needs_thread"
    )
    request = RequestFactory().get("/")
    request.session = {}
    StockMessageMiddleware(lambda r: HttpResponse()).process_request(request)
    storage = request._messages
    assert (storage.used, storage.added_new) == (False, False)


def test_csrf_checks_read_the_session_only_with_csrf_use_sessions():
    """chatsite.middleware.CsrfViewMiddleware and conversations.auth.acsrf_rejection run
    Django's CSRF hooks inline unless CSRF_USE_SESSIONS (or a multipart body) is in play."""
    for method in ("_get_secret", "_set_csrf_cookie"):
        code = source(getattr(StockCsrfViewMiddleware, method))
        before_the_session = code.split("request.session", 1)[0]
        assert "if settings.CSRF_USE_SESSIONS:" in before_the_session, (
            f"CsrfViewMiddleware.{method} reads the session on another condition now"
        )
    assert parameters(StockCsrfViewMiddleware.process_view) == [
        "self",
        "request",
        "callback",
        "callback_args",
        "callback_kwargs",
    ], "CsrfViewMiddleware.process_view takes other arguments: update conversations.auth"


@pytest.mark.django_db
def test_the_hooks_run_inline_make_no_query(django_assert_num_queries, user):
    """Each hook InlineHooksMixin runs on the event loop, on a request with a session cookie
    and a CSRF cookie, when nothing is to be saved: no query (on the loop it would raise)."""
    from django.contrib.sessions.backends.db import SessionStore

    session = SessionStore()
    session["_auth_user_id"] = str(user.pk)
    session.save()
    cookies = f"sessionid={session.session_key}; csrftoken={get_random_string(32)}"
    request = RequestFactory().post("/api/conversations", HTTP_COOKIE=cookies)
    response = HttpResponse()
    names = [path for path in settings.FAST_MIDDLEWARE.values() if "StaticFiles" not in path]
    classes = [getattr(middleware, path.rsplit(".", 1)[1]) for path in names]
    with django_assert_num_queries(0):
        instances = [cls(lambda r: response) for cls in classes]
        for instance in instances:
            if hasattr(instance, "process_request"):
                assert not instance.request_needs_thread(request)
                instance.process_request(request)
        for instance in reversed(instances):
            if hasattr(instance, "process_response"):
                assert not instance.response_needs_thread(request, response)
                instance.process_response(request, response)


def test_whitenoise_middleware_finds_and_serves_a_file_as_static_files_middleware_uses_it():
    assert parameters(WhiteNoiseMiddleware.__init__) == ["self", "get_response", "settings"]
    assert parameters(WhiteNoiseMiddleware.serve) == ["static_file", "request"]
    assert "find_file" in dir(WhiteNoiseMiddleware)
    assert "self.serve(static_file, request)" in source(WhiteNoiseMiddleware.__call__), (
        "WhiteNoiseMiddleware.__call__ changed: update chatsite.middleware.StaticFilesMiddleware"
    )

    async def get_response(request):
        return HttpResponse(status=404)

    static = middleware.StaticFilesMiddleware(get_response)
    path = "/" + settings.STATIC_URL.strip("/") + "/conversations/chat.css"
    request = RequestFactory().get(path)
    found = static.find_file(path) if static.autorefresh else static.files.get(path)
    assert found is not None, f"WhiteNoise no longer finds {path}"

    served = static.serve_in_memory(found, request)

    assert served.status_code == 200
    assert (
        served.content == (Path(settings.BASE_DIR) / "static/conversations/chat.css").read_bytes()
    )


# chatsite/checks.py ---------------------------------------------------------------------------


def test_djangos_security_check_messages_are_importable_by_name():
    for name in ("W004", "W005", "W006", "W008", "W019", "W021", "W022", "E023", "E024"):
        assert hasattr(security_checks, name), f"django.core.checks.security.base.{name} is gone"
    assert hasattr(security_checks, "REFERRER_POLICY_VALUES")
    assert hasattr(security_checks, "CROSS_ORIGIN_OPENER_POLICY_VALUES")
    assert hasattr(csrf_checks, "W016")


# conversations/statements/postgresql.py ------------------------------------------------------


def test_model_meta_and_state_have_what_the_sql_statements_build_from():
    meta = Message._meta
    assert [f.name for f in meta.concrete_fields] == [
        f.name for f in meta.get_fields() if getattr(f, "concrete", False)
    ]
    assert meta.db_table == "conversations_message" and meta.pk.column == "id"
    for field in meta.concrete_fields:
        assert hasattr(field, "generated") and callable(field.has_db_default), (
            "Field.generated / Field.has_db_default() are gone: postgresql.written_by_sql "
            "cannot tell which models the ORM must write"
        )
    assert parameters(meta.get_field("created_at").pre_save) == ["model_instance", "add"]
    assert postgresql.written_by_sql(Message)
    state = Message()._state
    assert (state.adding, state.db) == (True, None)
    assert connection.ops.quote_name("x") in ('"x"', "`x`", "[x]")


def test_an_offline_connection_object_quotes_and_adapts_without_connecting():
    wrapper = postgresql.adapter()
    assert wrapper is not connection, "create_connection gave back the context's connection"
    assert wrapper.connection is None
    field = Message._meta.get_field("content")
    assert wrapper.ops.quote_name("x") == connection.ops.quote_name("x")
    assert field.get_db_prep_save("text", wrapper) == "text"
    assert wrapper.connection is None, "adapting a value opened a connection"


def test_a_fields_cast_db_type_names_its_column_type():
    for name in ("created_at", "finished_at", "content", "parent"):
        field = Message._meta.get_field(name)
        assert callable(getattr(field, "cast_db_type", None)), "Field.cast_db_type is gone"
        cast = field.cast_db_type(connection)
        assert isinstance(cast, str) and cast, f"no column type for Message.{name}"


# conversations/tokens.py ---------------------------------------------------------------------


def test_a_fields_cached_col_gives_the_converters_the_orm_applies():
    field = tokens._user_fields()[0]
    assert isinstance(field.cached_col, Col), "Field.cached_col is gone or no longer a Col"
    assert parameters(connection.ops.get_db_converters) == ["expression"]
    assert isinstance(field.cached_col.get_db_converters(connection), list)
    names, converters = tokens._user_columns()
    assert names[0] == "id" and all(callable(convert) for _, convert in converters)


# conversations/asyncdb.py --------------------------------------------------------------------


@on_postgresql_only
def test_djangos_connection_params_name_a_sync_cursor_class_the_async_pool_swaps():
    import psycopg

    params = connection.get_connection_params()
    assert issubclass(params.get("cursor_factory"), psycopg.ClientCursor), (
        "get_connection_params() no longer names a psycopg ClientCursor as cursor_factory: "
        "asyncdb's pool would be built with a sync cursor class"
    )
    assert "pool" not in params and "dbname" in params


@on_postgresql_only
def test_the_async_pool_opens_on_djangos_connection_params():
    async def select_one():
        return await asyncdb.fetchall("SELECT 1", [])

    assert run_in_new_loop(select_one()) == [(1,)]


def test_psycopg_has_an_error_class_of_each_djangos_name():
    import psycopg

    for django_error in asyncdb.DJANGO_ERRORS:
        assert issubclass(getattr(psycopg, django_error.__name__), psycopg.Error), (
            f"psycopg.{django_error.__name__} is gone: asyncdb maps errors by name"
        )


# conversations/providers ---------------------------------------------------------------------


def test_httpx_client_keeps_its_jar_in_cookies_and_fills_it_through_extract_cookies():
    client = UpstreamHttpClient()
    try:
        assert isinstance(client.cookies, NoCookies), (
            "httpx's AsyncClient no longer keeps its jar in _cookies: the upstream's cookies "
            "would be kept and sent with other users' requests"
        )
    finally:
        run_in_new_loop(client.aclose())
    assert "self.cookies.extract_cookies(response)" in source(
        httpx.AsyncClient._send_single_request
    ), "httpx fills the jar another way now: NoCookies.extract_cookies would not stop it"


def test_urllib_proxy_bypass_environment_reads_no_proxy_from_the_given_dict():
    assert parameters(urllib.request.proxy_bypass_environment) == ["host", "proxies"]
    proxies = {"https": "http://proxy.example:3128", "no": "model.internal,.example.org"}

    assert urllib.request.proxy_bypass_environment("model.internal", proxies)
    assert urllib.request.proxy_bypass_environment("api.example.org", proxies)
    assert not urllib.request.proxy_bypass_environment("api.openai.com", proxies)


def test_aiohttp_client_request_sends_its_head_itself_when_it_holds_no_body():
    """BodyWithHeadRequest holds a bytes body back from ClientRequest.send and writes it after."""
    import aiohttp
    from aiohttp.payload import BytesPayload
    from yarl import URL

    from conversations.providers.aiohttp_transport import BodyWithHeadRequest

    assert "request_class" in parameters(aiohttp.ClientSession.__init__)
    assert parameters(aiohttp.ClientRequest.send) == ["self", "conn"]
    send = source(aiohttp.ClientRequest.send)
    assert "if self._body or self._continue is not None or protocol.writing_paused:" in send, (
        "aiohttp's ClientRequest.send decides on a body writer another way: update "
        "BodyWithHeadRequest.send"
    )
    assert "writer.set_eof()" in send, "aiohttp no longer sends a body-less head in send"

    async def built() -> BodyWithHeadRequest:
        return BodyWithHeadRequest("POST", URL("http://upstream.test/v1"), data=b'{"a": 1}')

    request = run_in_new_loop(built())
    assert isinstance(request._body, BytesPayload)
    assert request._body._value == b'{"a": 1}'
    assert request._continue is None
    assert request.chunked is None  # a body of known length: not chunked, as the shortcut needs
    assert "if self.chunked is not None:\n            writer.enable_chunking()" in send


def test_the_sdk_posts_a_raw_streaming_request_to_any_path():
    from openai import AsyncOpenAI

    post = inspect.signature(AsyncOpenAI.post).parameters
    assert {"path", "cast_to", "body", "stream"} <= set(post), (
        "AsyncOpenAI.post(path, cast_to=httpx.Response, body=…, stream=True) changed: update "
        "OpenAICompatibleProvider.stream"
    )


# chatsite/cache.py ---------------------------------------------------------------------------


def test_djangos_redis_cache_builds_its_pools_with_the_pool_classes_from_url():
    assert "self._pool_class.from_url(" in source(RedisCacheClient._get_connection_pool), (
        "Django's RedisCache builds its pools another way: chatsite.cache.SharedConnectionPool "
        "would no longer be shared"
    )


# conversations/views.py: handler500 ---------------------------------------------------------


def test_sync_to_async_carries_the_exception_being_handled_into_its_thread():
    """views.server_error reads sys.exc_info(): under ASGI Django calls it in a thread."""

    def handled() -> type | None:
        return sys.exc_info()[0]

    async def in_except() -> type | None:
        try:
            raise LookupError
        except LookupError:
            return await sync_to_async(handled, thread_sensitive=False)()

    assert run_in_new_loop(in_except()) is LookupError, (
        "asgiref no longer sets sys.exc_info() in the thread: server_error cannot tell a "
        "database outage (503) from a bug (500)"
    )


# docs/internals.md -----------------------------------------------------------------------------


def test_the_list_names_only_tests_that_exist_and_every_guard_here():
    """docs/internals.md names each entry's guard as ``test_file.py::test_name``."""
    root = Path(settings.BASE_DIR)
    listed = set(
        re.findall(r"(test_\w+\.py)::(test_\w+)", (root / "docs" / "internals.md").read_text())
    )
    for file, name in sorted(listed):
        assert f"def {name}(" in (root / "tests" / file).read_text(), (
            f"docs/internals.md names {file}::{name}, which does not exist"
        )
    here = set(re.findall(r"^def (test_\w+)\(", Path(__file__).read_text(), re.M))
    here.discard("test_the_list_names_only_tests_that_exist_and_every_guard_here")
    assert here - {name for file, name in listed if file == "test_internals.py"} == set(), (
        "a guard in tests/test_internals.py is missing from docs/internals.md"
    )
