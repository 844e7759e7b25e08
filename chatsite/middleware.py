"""Project-wide middleware: security headers, static files, and Django's stack without threads.

The function middlewares (proxy headers, default headers) serve both modes. The classes are
the fast path's (CHAT_FAST_PATH=1): each is Django's or WhiteNoise's own middleware with its
hooks run on the event loop; settings.FAST_MIDDLEWARE pairs each with the stock class that
CHAT_FAST_PATH=0 uses instead. What they rely on below the public API is in docs/internals.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib.auth import middleware as auth_middleware
from django.contrib.messages import middleware as messages_middleware
from django.contrib.sessions import middleware as sessions_middleware
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.middleware import clickjacking, common, csrf, security
from django.utils.cache import patch_vary_headers
from django.utils.decorators import sync_and_async_middleware
from django.utils.deprecation import MiddlewareMixin
from whitenoise.middleware import WhiteNoiseMiddleware

from chatsite.logs import REQUEST_ID, request_id_for
from conversations.limits import is_trusted_proxy

PRIVATE = "private, no-store"

# Django's next handler: a coroutine function under ASGI, a plain function under WSGI.
GetResponse = Callable[[HttpRequest], Any]
AsyncGetResponse = Callable[[HttpRequest], Awaitable[HttpResponseBase]]


def set_default_headers(request: HttpRequest, response: HttpResponseBase) -> None:
    """CONTENT_SECURITY_POLICY (no inline script), and no caching of what a response did not
    say may be cached (pages and API answers are the caller's own); API answers depend on the
    Authorization header too."""
    headers = response.headers
    headers.setdefault("X-Request-Id", REQUEST_ID.get())
    headers.setdefault("Content-Security-Policy", settings.CONTENT_SECURITY_POLICY)
    headers.setdefault("Cache-Control", PRIVATE)
    if request.path.startswith("/api/"):
        patch_vary_headers(response, ("Authorization",))


@sync_and_async_middleware
def default_headers_middleware(get_response: GetResponse) -> GetResponse:
    """The request's id (``chatsite.logs``) for everything logged while it is handled, then
    set_default_headers on every response that did not set its own (static files do)."""
    if iscoroutinefunction(get_response):

        async def amiddleware(request: HttpRequest) -> HttpResponseBase:
            identify(request)
            response: HttpResponseBase = await get_response(request)
            set_default_headers(request, response)
            return response

        return amiddleware

    def middleware(request: HttpRequest) -> HttpResponseBase:
        identify(request)
        response: HttpResponseBase = get_response(request)
        set_default_headers(request, response)
        return response

    return middleware


@sync_and_async_middleware
def proxy_headers_middleware(get_response: GetResponse) -> GetResponse:
    """SECURE_PROXY_SSL_HEADER counts only from CHAT_TRUSTED_PROXIES. Goes first.

    Django believes that header (X-Forwarded-Proto) from any client, so a client reaching the
    site directly could pass plain HTTP off as HTTPS: no SSL redirect, HSTS over HTTP. Here the
    header is dropped before the security middleware reads it, unless the socket's address is
    a trusted proxy.
    """
    proxy_ssl_header = settings.SECURE_PROXY_SSL_HEADER
    header = proxy_ssl_header[0] if proxy_ssl_header else None

    def drop_untrusted(request: HttpRequest) -> None:
        if header in request.META and not is_trusted_proxy(request.META.get("REMOTE_ADDR", "")):
            del request.META[header]

    if iscoroutinefunction(get_response):

        async def amiddleware(request: HttpRequest) -> HttpResponseBase:
            drop_untrusted(request)
            response: HttpResponseBase = await get_response(request)
            return response

        return amiddleware

    def middleware(request: HttpRequest) -> HttpResponseBase:
        drop_untrusted(request)
        response: HttpResponseBase = get_response(request)
        return response

    return middleware


def identify(request: HttpRequest) -> None:
    REQUEST_ID.set(
        request_id_for(
            request.META.get("HTTP_X_REQUEST_ID"),
            from_trusted_proxy=is_trusted_proxy(request.META.get("REMOTE_ADDR", "")),
        )
    )


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    """WhiteNoise that stays out of the async request path.

    WhiteNoise's own middleware is sync-only, so under ASGI Django would run every request
    through a thread hop to reach it. Here only static files take that hop (to read the file).
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse, settings: Any = settings) -> None:
        super().__init__(get_response, settings)
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    # WhiteNoiseMiddleware already replaces WhiteNoise's WSGI __call__(environ, start_response)
    # with Django's __call__(request); whitenoise has no type hints to say so.
    def __call__(self, request: HttpRequest) -> Any:  # type: ignore[override]
        if self.async_mode:
            return self.__acall__(request)
        return super().__call__(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        if self.autorefresh:
            static_file = await sync_to_async(self.find_file)(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is None:
            return await cast(AsyncGetResponse, self.get_response)(request)
        return await sync_to_async(self.serve_in_memory)(static_file, request)

    def serve_in_memory(self, static_file: Any, request: HttpRequest) -> HttpResponse:
        """The file's response with its body read (static files are small), so that Django
        does not have to iterate a synchronous file object from async code."""
        streamed = self.serve(static_file, request)
        response = HttpResponse(b"".join(streamed.streaming_content), status=streamed.status_code)
        for name, value in streamed.items():
            response[name] = value
        streamed.close()
        return response


class InlineHooksMixin(MiddlewareMixin):
    """Run a Django middleware's hooks on the event loop instead of in a thread.

    Under ASGI, ``MiddlewareMixin`` runs every ``process_request`` and ``process_response``
    through ``sync_to_async``: two thread hops per middleware, about a dozen per request for
    Django's usual stack. The hooks of the middlewares below only read headers and cookies and
    set attributes, so they run inline; a hook that may reach the database this time (saving a
    session, storing messages) says so in ``*_needs_thread`` and still takes the hop.
    """

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response = None
        if hasattr(self, "process_request"):
            if self.request_needs_thread(request):
                response = await sync_to_async(self.process_request)(request)
            else:
                response = self.process_request(request)
        response = response or await cast(AsyncGetResponse, self.get_response)(request)
        if hasattr(self, "process_response"):
            if self.response_needs_thread(request, response):
                response = await sync_to_async(self.process_response)(request, response)
            else:
                response = self.process_response(request, response)
        return response

    def request_needs_thread(self, request: HttpRequest) -> bool:
        return False

    def response_needs_thread(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        return False


class SecurityMiddleware(InlineHooksMixin, security.SecurityMiddleware):
    """Django's, with its hooks on the event loop (the proxy header rule is
    ``proxy_headers_middleware``'s, which goes first in both modes)."""


class SessionMiddleware(InlineHooksMixin, sessions_middleware.SessionMiddleware):
    def response_needs_thread(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        session = getattr(request, "session", None)
        if session is None:
            return False
        saving = session.modified or settings.SESSION_SAVE_EVERY_REQUEST
        return saving and not session.is_empty()


class CommonMiddleware(InlineHooksMixin, common.CommonMiddleware):
    pass


class CsrfViewMiddleware(InlineHooksMixin, csrf.CsrfViewMiddleware):
    """CSRF checks inline, except where they read the session or parse a multipart body."""

    def request_needs_thread(self, request: HttpRequest) -> bool:
        return settings.CSRF_USE_SESSIONS

    def response_needs_thread(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        return settings.CSRF_USE_SESSIONS

    # Django adapts each process_view to the handler's mode, so an async one is called as such;
    # the stubs type it as sync only.
    async def process_view(  # type: ignore[override]
        self,
        request: HttpRequest,
        callback: Callable[..., Any],
        callback_args: tuple[Any, ...],
        callback_kwargs: dict[str, Any],
    ) -> HttpResponseBase | None:
        if settings.CSRF_USE_SESSIONS or request.content_type == "multipart/form-data":
            return await sync_to_async(super().process_view)(
                request, callback, callback_args, callback_kwargs
            )
        return super().process_view(request, callback, callback_args, callback_kwargs)


class AuthenticationMiddleware(InlineHooksMixin, auth_middleware.AuthenticationMiddleware):
    pass


class MessageMiddleware(InlineHooksMixin, messages_middleware.MessageMiddleware):
    def response_needs_thread(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        storage = getattr(request, "_messages", None)
        return storage is not None and (storage.used or storage.added_new)


class XFrameOptionsMiddleware(InlineHooksMixin, clickjacking.XFrameOptionsMiddleware):
    pass
