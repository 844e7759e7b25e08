"""Staff inspect saved exchanges here; they do not rewrite them."""

from __future__ import annotations

import json

from django.contrib import admin, messages
from django.db.models import Count, F, IntegerField, OuterRef, Subquery, Sum, Value
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.html import format_html

from .durations import duration_text
from .exports import conversations_export
from .markdown import render_markdown
from .models import ApiToken, Conversation, Message
from .tokens import api_token_create, api_tokens_revoke, token_digest


def _per_conversation(queryset, expression, output_field=None) -> Subquery:
    """One value per conversation from its messages, as a subquery (immune to search joins)."""
    values = (
        queryset.filter(conversation=OuterRef("pk"))
        .order_by()
        .values("conversation")
        .annotate(value=expression)
        .values("value")
    )
    return Subquery(values, output_field=output_field)


class LastReplyStatusFilter(admin.SimpleListFilter):
    title = "status of the last reply"
    parameter_name = "last_reply_status"

    def lookups(self, request, model_admin):
        return Message.Status.choices

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(last_reply_status=self.value())
        return queryset


class TranscriptInline(admin.TabularInline):
    """The conversation as it was said: replies rendered as on the chat page (the same
    sanitised Markdown), messages with their line breaks and indentation, one short line of
    figures each, and "–" where a figure is unknown rather than a misleading 0."""

    model = Message
    extra = 0
    can_delete = False
    show_change_link = True
    ordering = ["created_at", "id"]
    fields = ["when", "role", "text", "outcome", "timing", "tokens", "attach_count"]
    readonly_fields = fields
    verbose_name = "message"
    verbose_name_plural = "transcript"
    classes = ["transcript"]

    class Media:
        css = {"all": ["conversations/admin.css"]}

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="when")
    def when(self, message: Message) -> str:
        return format_html(
            '<time class="nowrap" datetime="{}">{}</time>',
            message.created_at.isoformat(),
            timezone.localtime(message.created_at).strftime("%Y-%m-%d %H:%M:%S"),
        )

    @admin.display(description="message")
    def text(self, message: Message) -> str:
        if message.role == Message.Role.ASSISTANT:
            return format_html(
                '<div class="transcript-markdown">{}</div>', render_markdown(message.content)
            )
        return format_html('<div class="transcript-plain">{}</div>', message.content)

    @admin.display(description="status")
    def outcome(self, message: Message) -> str:
        if not message.error_code:
            return format_html('<span class="nowrap">{}</span>', message.get_status_display())
        return format_html(
            '<span class="nowrap">{} · {}</span><br><span class="transcript-error">{}</span>',
            message.get_status_display(),
            message.error_code,
            message.error_message,
        )

    @admin.display(description="time to first token · duration")
    def timing(self, message: Message) -> str:
        if message.role != Message.Role.ASSISTANT:
            return "–"
        return format_html(
            '<span class="nowrap">{} · {}</span>',
            duration_text(message.ttft_ms),
            duration_text(message.duration_ms),
        )

    @admin.display(description="tokens in → out")
    def tokens(self, message: Message) -> str:
        if message.prompt_tokens is None and message.completion_tokens is None:
            return "–"
        return format_html(
            '<span class="nowrap">{} → {}</span>',
            "–" if message.prompt_tokens is None else message.prompt_tokens,
            "–" if message.completion_tokens is None else message.completion_tokens,
        )


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = [
        "title", "owner", "message_count", "updated_at", "model", "total_tokens",
        "last_reply_status",
    ]  # fmt: skip
    list_select_related = ["owner"]
    list_filter = [
        ("owner", admin.RelatedOnlyFieldListFilter),
        "model",
        LastReplyStatusFilter,
        "updated_at",
    ]
    search_fields = ["title", "messages__content", "owner__username"]
    date_hierarchy = "created_at"
    fields = ["title", "owner", "model", "system_prompt", "created_at", "updated_at"]
    readonly_fields = fields
    inlines = [TranscriptInline]
    actions = ["export_json"]

    def get_queryset(self, request: HttpRequest):
        tokens = Coalesce(F("prompt_tokens"), 0) + Coalesce(F("completion_tokens"), 0)
        last_reply = Message.objects.filter(
            conversation=OuterRef("pk"), role=Message.Role.ASSISTANT
        ).order_by("-created_at", "-id")
        return (
            super()
            .get_queryset(request)
            .annotate(
                message_count=Coalesce(
                    _per_conversation(Message.objects.all(), Count("id")), Value(0)
                ),
                total_tokens=Coalesce(
                    _per_conversation(Message.objects.all(), Sum(tokens), IntegerField()),
                    Value(0),
                ),
                last_reply_status=Subquery(last_reply.values("status")[:1]),
            )
        )

    @admin.display(ordering="message_count", description="messages")
    def message_count(self, conversation: Conversation) -> int:
        return conversation.message_count

    @admin.display(ordering="total_tokens", description="tokens")
    def total_tokens(self, conversation: Conversation) -> int:
        return conversation.total_tokens

    @admin.display(ordering="last_reply_status", description="last reply")
    def last_reply_status(self, conversation: Conversation) -> str:
        return conversation.last_reply_status or "–"

    @admin.action(description="Export selected conversations as JSON")
    def export_json(self, request: HttpRequest, queryset) -> HttpResponse:
        body = json.dumps({"conversations": conversations_export(queryset)}, indent=2)
        response = HttpResponse(body, content_type="application/json")
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        response["Content-Disposition"] = f'attachment; filename="conversations-{stamp}.json"'
        return response

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = [
        "id", "conversation", "role", "status", "error_code", "model", "created_at", "ttft_ms",
        "attach_count",
    ]  # fmt: skip
    list_filter = ["role", "status", "error_code", "model", "created_at"]
    search_fields = ["content"]
    list_select_related = ["conversation"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "prefix", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["revoked_at", "created_at"]
    list_select_related = ["owner"]
    search_fields = ["name", "owner__username", "prefix"]
    actions = ["revoke"]

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["owner", "name"]
        return ["owner", "name", "prefix", "created_at", "last_used_at", "revoked_at"]

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else ["owner", "prefix", "created_at", "last_used_at"]

    def save_model(self, request, obj: ApiToken, form, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        token, raw = api_token_create(owner=obj.owner, name=obj.name)
        obj.pk, obj.prefix, obj.digest = token.pk, token.prefix, token_digest(raw)
        messages.warning(request, f"The new token is {raw} — copy it now; it is not shown again.")

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request: HttpRequest, queryset) -> None:
        count = api_tokens_revoke(tokens=queryset)
        self.message_user(request, f"{count} token(s) revoked.")
