from __future__ import annotations

import sys
from collections.abc import AsyncGenerator

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.models import User
from django.contrib.auth.views import LoginView
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.views import defaults
from django.views.csrf import csrf_failure as default_csrf_failure

from chatsite import metrics
from chatsite.lifecycle import run_after_request

from . import outages
from .attempts import SIGN_IN, SIGN_UP, attempts_limited
from .auth import require_same_origin_session, require_staff
from .catalog import model_choice_aget, model_choice_get
from .diagnostics import diagnostic_frames
from .errors import error_response
from .http import ApiRequest, AuthenticatedRequest, api_view, is_api_path
from .inputs import (
    chat_request_from_json,
    chat_request_from_query,
    conversation_title_from_json,
    diagnostic_plan_from_query,
    idempotency_key_from,
    json_body,
    last_event_id_from,
    pagination_from_query,
    position_from_query,
    search_query_from,
    usage_days_from_query,
)
from .models import Conversation, Message
from .openapi import openapi_document
from .outages import is_database_unavailable
from .replies import (
    Attachable,
    RemoteFrames,
    RemoteReply,
    Reply,
    conversation_adelete,
    message_acancel,
    reply_aattach,
    reply_aresume,
    reply_astart,
    reply_astart_once,
)
from .selectors import (
    SIDEBAR_LENGTH,
    conversation_aget_owned,
    conversation_apage_for_user,
    conversation_date_groups,
    conversation_get_for_user,
    conversation_list_for_user,
    conversation_shown_path,
    message_get_for_user,
    message_version,
)
from .serializers import conversation_detail, conversation_summary, usage_summary
from .services import conversation_arename, conversation_ashow_version
from .sse import EventStreamResponse
from .streams import JsonFramer, QueryFramer, ReplyFrames, saved_reply_frames
from .usage import MAX_USAGE_DAYS, usage_asummary


@login_required
def chat(request: AuthenticatedRequest, conversation_id: int | None = None) -> HttpResponse:
    """The chat page: the sidebar, the selected conversation (if any) and the composer."""
    conversation = None
    if conversation_id is not None:
        conversation = conversation_get_for_user(request.user, conversation_id)
    conversations = list(conversation_list_for_user(request.user)[:SIDEBAR_LENGTH])
    context = {
        "conversation": conversation,
        "path": conversation_shown_path(conversation) if conversation else [],
        "conversations": conversations,
        "conversation_groups": conversation_date_groups(conversations),
        "auto_titles": settings.CHAT_AUTO_TITLES,
        **composer_context(conversation),
    }
    return render(request, "conversations/chat.html", context)


def composer_context(conversation: Conversation | None) -> dict[str, object]:
    """The composer's choices and limits: the models on offer (the open conversation's, or
    the default, selected) and the longest message and system prompt."""
    models = model_choice_get()
    return {
        "models": models.names,
        "selected_model": (
            models.for_conversation(conversation.model) if conversation else models.default
        ),
        "max_message_chars": settings.CHAT_MAX_MESSAGE_CHARS,
        "max_system_prompt_chars": settings.CHAT_MAX_SYSTEM_PROMPT_CHARS,
        "default_system_prompt": settings.CHAT_SYSTEM_PROMPT,
    }


@login_required
def message_fragment(
    request: AuthenticatedRequest, conversation_id: int, message_id: int
) -> HttpResponse:
    """One saved message as the page renders it, to replace the streamed copy."""
    message = message_get_for_user(request.user, conversation_id, message_id)
    context = {"message": message, "version": message_version(message)}
    return render(request, "conversations/_message.html", context)


sign_in = attempts_limited(SIGN_IN)(LoginView.as_view())
admin_sign_in = attempts_limited(SIGN_IN)(admin.site.login)


@attempts_limited(SIGN_UP)
def signup(request: HttpRequest) -> HttpResponse:
    if not settings.CHAT_SIGNUP_ENABLED:
        raise Http404("Sign-up is turned off.")
    form: UserCreationForm[User] = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("home")
    return render(request, "registration/signup.html", {"form": form})


def starts_a_reply(request: HttpRequest) -> bool:
    """Whether a request to chat_stream starts a reply (unless it repeats an Idempotency-Key):
    a GET resuming with Last-Event-ID does not."""
    return request.method == "POST" or "Last-Event-ID" not in request.headers


@api_view("GET", "POST", starts_a_reply=starts_a_reply)
async def chat_stream(request: ApiRequest) -> HttpResponseBase:
    """``GET`` for EventSource and curl, ``POST`` for fetch clients; one reply either way.
    A ``GET`` with ``Last-Event-ID`` resumes the reply it names, or gets 204."""
    if request.method == "GET":
        if "Last-Event-ID" in request.headers:
            return await _resume(request)
        require_same_origin_session(request)
        chat_request = chat_request_from_query(request.GET)
        reply = await reply_astart(
            user=request.api_user, chat_request=chat_request, slot=request.stream_slot
        )
        return reply_response(reply, QueryFramer(reply.rows[1]), joining=False)
    payload = json_body(request, max_bytes=settings.CHAT_MAX_BODY_BYTES)
    chat_request = chat_request_from_json(payload)
    started, fresh = await reply_astart_once(
        user=request.api_user,
        chat_request=chat_request,
        idempotency_key=idempotency_key_from(request),
        slot=request.stream_slot,
    )
    if fresh and isinstance(started, Reply):  # a fresh start is always a Reply of this process
        return reply_response(started, JsonFramer(), joining=False)
    return attached_response(started, JsonFramer(), after=0, kind="repeat")


async def _resume(request: ApiRequest) -> HttpResponseBase:
    """The rest of the reply an EventSource saw part of; 204 (which ends EventSource) when
    there is nothing to resume: the id is malformed, not of the caller's reply, of a reply no
    longer kept, or its last frame."""
    parsed = last_event_id_from(request)
    if parsed is None:
        return HttpResponse(status=204)
    message_id, position = parsed
    resumed = await reply_aresume(user=request.api_user, message_id=message_id, position=position)
    if resumed is None:
        return HttpResponse(status=204)
    return attached_response(
        resumed, QueryFramer(message_id, position), after=position, kind="resume"
    )


def reply_response(
    reply: Reply,
    framer: QueryFramer | JsonFramer,
    *,
    position: int = 0,
    joining: bool = True,
) -> EventStreamResponse:
    frames = ReplyFrames(reply, framer, position=position, joining=joining)
    return event_stream(frames, *reply.rows)


def event_stream(
    frames: ReplyFrames | RemoteFrames | AsyncGenerator[bytes, None],
    conversation_id: int,
    message_id: int,
) -> EventStreamResponse:
    """The response carrying ``frames``; their ``aclose`` runs however it ends, even if it
    is never sent."""
    run_after_request(frames.aclose)
    metrics.stream_track()
    response = EventStreamResponse(frames)
    response["X-Conversation-Id"] = str(conversation_id)
    response["X-Message-Id"] = str(message_id)
    return response


@api_view("GET")
async def message_stream(request: ApiRequest, message_id: int) -> HttpResponseBase:
    """A reply of the caller's from token frame ``after + 1`` on, in the POST stream's frames:
    live while it runs, what is left and its final frame once it has ended."""
    after = position_from_query(request.GET, "after")
    attached = await reply_aattach(user=request.api_user, message_id=message_id, after=after)
    return attached_response(attached, JsonFramer(), after=after, kind="attach")


SOURCES = {Reply: "here", RemoteReply: "elsewhere", Message: "saved"}
"""Where a reply a client attaches to was found, as the metrics name it."""


def attached_response(
    attached: Attachable, framer: QueryFramer | JsonFramer, *, after: int, kind: str
) -> EventStreamResponse:
    """A reply's frames past ``after``: live from a reply this process keeps or another
    produces, or from the saved row of one no longer kept anywhere. ``kind``: how the client
    came to it (resume, attach, repeat), for the metrics."""
    metrics.reply_attached(kind=kind, source=SOURCES[type(attached)])
    if isinstance(attached, Reply):
        return reply_response(attached, framer, position=after)
    if isinstance(attached, RemoteReply):
        frames = RemoteFrames(
            attached, framer, position=after, keepalive=settings.CHAT_KEEPALIVE_SECONDS
        )
        return event_stream(frames, attached.conversation_id, attached.message_id)
    saved = saved_reply_frames(attached, after=after)
    return event_stream(saved, attached.conversation_id, attached.pk)


@api_view("GET")
async def conversation_list(request: ApiRequest) -> HttpResponse:
    """The caller's conversations, newest first; with ``q``, those whose title or messages
    have its words, each with a snippet of the first message that has them."""
    page, page_size = pagination_from_query(request.GET)
    found = await conversation_apage_for_user(
        request.api_user, query=search_query_from(request.GET), page=page, page_size=page_size
    )
    summaries = [conversation_summary(c) for c in found.results]
    if found.snippets is not None:
        for summary in summaries:
            summary["snippet"] = found.snippets.get(summary["id"])
    return JsonResponse(
        {
            "results": summaries,
            "page": page,
            "page_size": page_size,
            "total": found.total,
            "has_next": found.has_next,
        }
    )


@api_view("GET", "PATCH", "DELETE")
async def conversation_detail_view(request: ApiRequest, conversation_id: int) -> HttpResponse:
    if request.method == "PATCH":
        title = conversation_title_from_json(
            json_body(request, max_bytes=settings.CHAT_MAX_BODY_BYTES)
        )
        conversation = await conversation_arename(
            user=request.api_user, conversation_id=conversation_id, title=title
        )
        return JsonResponse(conversation_summary(conversation))
    conversation = await conversation_aget_owned(request.api_user, conversation_id)
    if request.method == "DELETE":
        await conversation_adelete(conversation=conversation)
        return HttpResponse(status=204)
    messages = [m async for m in conversation.messages.all()]
    return JsonResponse(conversation_detail(conversation, messages))


@api_view("GET")
async def model_list(request: ApiRequest) -> HttpResponse:
    """The models a caller may ask for, the default first."""
    models = await model_choice_aget()
    return JsonResponse({"default": models.default, "models": list(models.names)})


@api_view("GET")
async def usage(request: ApiRequest) -> HttpResponse:
    """The caller's token usage over the last ``days`` UTC days, per day and model, and their
    daily quota: how much is left and when it resets."""
    days = usage_days_from_query(request.GET, maximum=MAX_USAGE_DAYS)
    summary = await usage_asummary(user=request.api_user, days=days)
    return JsonResponse(usage_summary(summary))


@api_view("POST")
async def message_cancel(request: ApiRequest, message_id: int) -> HttpResponse:
    """Stop a reply that is still streaming; its partial text is saved as ``cancelled``."""
    message = await message_acancel(user=request.api_user, message_id=message_id)
    return JsonResponse({"id": message.pk, "status": message.status})


@api_view("POST")
async def message_show(request: ApiRequest, message_id: int) -> HttpResponse:
    """Show this version of its turn (and the newest replies below it) in its conversation."""
    conversation_id, path = await conversation_ashow_version(
        user=request.api_user, message_id=message_id
    )
    return JsonResponse({"conversation_id": conversation_id, "current_path": path})


@api_view("GET")
async def diagnostics_stream(request: ApiRequest) -> HttpResponseBase:
    """Timed frames for ``manage.py check_streaming`` (staff only): sent and framed as the
    reply streams are, so that what happens to them on the way happens to these."""
    require_staff(request.api_user)
    require_same_origin_session(request)
    plan = diagnostic_plan_from_query(request.GET)
    return EventStreamResponse(
        diagnostic_frames(plan, keepalive_seconds=settings.CHAT_KEEPALIVE_SECONDS)
    )


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
    """500, or 503 when the database is unreachable. Django calls this while it handles the
    exception (in a thread for async views, where asgiref keeps ``sys.exc_info()``)."""
    error = sys.exc_info()[1]
    if is_database_unavailable(error):
        outages.report(error)
        return database_unavailable(request)
    if is_api_path(request):
        return error_response(500, "internal_error", "Something went wrong on the server.")
    return defaults.server_error(request)


def database_unavailable(request: HttpRequest) -> HttpResponse:
    """503 with Retry-After; the page is rendered without the request (its context would
    read the session, from the database)."""
    retry = {"Retry-After": str(outages.RETRY_AFTER_SECONDS)}
    metrics.request_refused(status=503, reason="database_unavailable")
    if is_api_path(request):
        message = "The database cannot be reached right now; try again shortly."
        return error_response(503, "database_unavailable", message, headers=retry)
    page = render_to_string("503.html", {"reason": "The site cannot reach its database right now."})
    return HttpResponse(page, status=503, headers=retry)
