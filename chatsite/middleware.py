"""Project-wide middleware: security headers and static files."""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.http import HttpResponse
from django.utils.decorators import sync_and_async_middleware
from whitenoise.middleware import WhiteNoiseMiddleware


@sync_and_async_middleware
def content_security_policy_middleware(get_response):
    """Send CONTENT_SECURITY_POLICY (no inline script) unless the response set its own."""
    policy = settings.CONTENT_SECURITY_POLICY

    if iscoroutinefunction(get_response):

        async def middleware(request):
            response = await get_response(request)
            response.headers.setdefault("Content-Security-Policy", policy)
            return response

    else:

        def middleware(request):
            response = get_response(request)
            response.headers.setdefault("Content-Security-Policy", policy)
            return response

    return middleware


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    """WhiteNoise that stays out of the async request path.

    WhiteNoise's own middleware is sync-only, so under ASGI Django would run every request
    through a thread hop to reach it. Here only static files take that hop (to read the file).
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response, settings=settings) -> None:
        super().__init__(get_response, settings)
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.async_mode:
            return self.__acall__(request)
        return super().__call__(request)

    async def __acall__(self, request):
        if self.autorefresh:
            static_file = await sync_to_async(self.find_file)(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is None:
            return await self.get_response(request)
        return await sync_to_async(self.serve_in_memory)(static_file, request)

    def serve_in_memory(self, static_file, request) -> HttpResponse:
        """The file's response with its body read (static files are small), so that Django
        does not have to iterate a synchronous file object from async code."""
        streamed = self.serve(static_file, request)
        response = HttpResponse(b"".join(streamed.streaming_content), status=streamed.status_code)
        for name, value in streamed.items():
            response[name] = value
        streamed.close()
        return response
