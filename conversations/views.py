from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.views import LoginView
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views import defaults
from django.views.csrf import csrf_failure as default_csrf_failure

from chatsite.lifecycle import run_after_request

from .attempts import SIGN_IN, SIGN_UP, attempts_limited
from .errors import ApiError, error_response
from .generation import generation_aopen, reply_astop
from .http import api_view, is_api_path
from .inputs import (
    chat_request_from_json,
    chat_request_from_query,
    json_body,
    pagination_from_query,
)
from .limits import stream_slots
from .models import Message
from .openapi import openapi_document
from .selectors import (
    SIDEBAR_LENGTH,
    conversation_aget_owned,
    conversation_api_list_for_user,
    conversation_get_for_user,
    conversation_list_for_user,
    message_aget_owned,
    message_get_for_user,
)
from .serializers import conversation_detail, conversation_summary
from .services import ChatRequest, conversation_adelete
from .sse import EventStreamResponse
from .streams import JsonFramer, QueryFramer, ReplyFrames


@login_required
def chat(request: HttpRequest, conversation_id: int | None = None) -> HttpResponse:
    """The chat page: the sidebar, the selected conversation (if any) and the composer."""
    conversation = None
    if conversation_id is not None:
        conversation = conversation_get_for_user(request.user, conversation_id)
    context = {
        "conversation": conversation,
        "messages": conversation.messages.all() if conversation else [],
        "conversations": conversation_list_for_user(request.user)[:SIDEBAR_LENGTH],
    }
    return render(request, "conversations/chat.html", context)


@login_required
def message_fragment(request: HttpRequest, conversation_id: int, message_id: int) -> HttpResponse:
    """One saved message as the page renders it, to replace the streamed copy."""
    message = message_get_for_user(request.user, conversation_id, message_id)
    return render(request, "conversations/_message.html", {"message": message})


sign_in = attempts_limited(SIGN_IN)(LoginView.as_view())
admin_sign_in = attempts_limited(SIGN_IN)(admin.site.login)


@attempts_limited(SIGN_UP)
def signup(request: HttpRequest) -> HttpResponse:
    if not settings.CHAT_SIGNUP_ENABLED:
        raise Http404("Sign-up is turned off.")
    form = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("home")
    return render(request, "registration/signup.html", {"form": form})


@api_view("GET", "POST")
async def chat_stream(request: HttpRequest) -> HttpResponse:
    """``GET`` for EventSource and curl, ``POST`` for fetch clients; one reply either way."""
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
    return await _stream_reply(request.api_user, chat_request, framer)


async def _stream_reply(user, chat_request: ChatRequest, framer) -> EventStreamResponse:
    slot = await stream_slots().acquire(f"user:{user.pk}")
    try:
        generation = await generation_aopen(user=user, chat_request=chat_request)
    except BaseException:
        await slot.release()
        raise
    frames = ReplyFrames(generation, framer, on_close=slot.release)
    run_after_request(frames.aclose)
    response = EventStreamResponse(frames)
    response["X-Conversation-Id"] = str(generation.conversation_id)
    response["X-Message-Id"] = str(generation.message_id)
    return response


@api_view("GET")
async def conversation_list(request: HttpRequest) -> HttpResponse:
    page, page_size = pagination_from_query(request.GET)
    conversations = conversation_api_list_for_user(request.api_user)
    total = await conversations.acount()
    offset = (page - 1) * page_size
    results = [c async for c in conversations[offset : offset + page_size]]
    return JsonResponse(
        {
            "results": [conversation_summary(c) for c in results],
            "page": page,
            "page_size": page_size,
            "total": total,
            "has_next": offset + len(results) < total,
        }
    )


@api_view("GET", "DELETE")
async def conversation_detail_view(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = await conversation_aget_owned(request.api_user, conversation_id)
    if request.method == "DELETE":
        await conversation_adelete(conversation=conversation)
        return HttpResponse(status=204)
    messages = [m async for m in conversation.messages.all()]
    return JsonResponse(conversation_detail(conversation, messages))


@api_view("POST")
async def message_cancel(request: HttpRequest, message_id: int) -> HttpResponse:
    """Stop a reply that is still streaming; its partial text is saved as ``cancelled``."""
    message = await message_aget_owned(request.api_user, message_id)
    if message.status == Message.Status.STREAMING:
        stopped = await reply_astop(message.pk)
        await message.arefresh_from_db()
        if not stopped and message.status == Message.Status.STREAMING:
            raise ApiError(
                409,
                "not_cancellable_here",
                "No server process stopped this reply: the one producing it has stopped running.",
            )
    return JsonResponse({"id": message.pk, "status": message.status})


def openapi_json(request: HttpRequest) -> JsonResponse:
    return JsonResponse(openapi_document(), json_dumps_params={"indent": 2})


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
