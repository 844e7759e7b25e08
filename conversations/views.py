from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views import defaults
from django.views.csrf import csrf_failure as default_csrf_failure

from .auth import api_auser
from .errors import ApiError, error_response
from .generation import generation_aopen
from .http import api_view, is_api_path
from .inputs import chat_request_from_json, chat_request_from_query, json_body
from .services import ChatRequest
from .sse import EventStreamResponse
from .streams import JsonFramer, QueryFramer, relay


@login_required
def home(request: HttpRequest) -> HttpResponse:
    return render(request, "conversations/home.html")


@api_view("GET", "POST")
async def chat_stream(request: HttpRequest) -> HttpResponse:
    """``GET`` for EventSource and curl, ``POST`` for fetch clients; one reply either way."""
    user = await api_auser(request)
    if request.method == "GET":
        if "HTTP_LAST_EVENT_ID" in request.META:
            return HttpResponse(status=204)
        if request.headers.get("Sec-Fetch-Site") == "cross-site":
            raise ApiError(403, "cross_site", "Cross-site requests cannot start a reply.")
        chat_request = chat_request_from_query(request.GET)
        framer = QueryFramer()
    else:
        payload = json_body(request, max_bytes=settings.CHAT_MAX_BODY_BYTES)
        chat_request = chat_request_from_json(payload)
        framer = JsonFramer()
    return await _stream_reply(user, chat_request, framer)


async def _stream_reply(user, chat_request: ChatRequest, framer) -> EventStreamResponse:
    generation = await generation_aopen(user=user, chat_request=chat_request)
    response = EventStreamResponse(relay(generation, framer))
    response["X-Conversation-Id"] = str(generation.conversation_id)
    response["X-Message-Id"] = str(generation.message_id)
    return response


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    if is_api_path(request):
        return error_response(403, "csrf_failed", "CSRF check failed; send the X-CSRFToken header.")
    return default_csrf_failure(request, reason)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_api_path(request):
        return error_response(404, "not_found", "No such endpoint.")
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if is_api_path(request):
        return error_response(500, "internal_error", "Something went wrong on the server.")
    return defaults.server_error(request)
