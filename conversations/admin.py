"""Staff inspect saved exchanges and token usage here; they do not rewrite them. They set a
user's own daily token quota."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypedDict

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.core.exceptions import PermissionDenied
from django.db.models import (
    Count,
    F,
    Field,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
)
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils import timezone
from django.utils.html import format_html

from .charts import stacked_bar_chart
from .dashboard import STATUSES, ReplyPeriod, reply_dashboard
from .durations import duration_text
from .exports import conversations_export
from .markdown import render_markdown
from .models import ApiToken, Conversation, Message, UsageDay, UserQuota
from .tokens import api_token_create, api_tokens_revoke, token_digest

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations


class _Versions(TypedDict):
    """What TranscriptInline.get_queryset annotates each message with."""

    version_count: int | None
    version_index: int | None


class _UsageTotal(TypedDict):
    """What UsageDayAdmin.get_queryset annotates each row with."""

    total: int


class _Totals(TypedDict):
    """What ConversationAdmin.get_queryset annotates each conversation with."""

    message_count: int
    total_tokens: int
    last_reply_status: str | None


def _per_conversation(
    queryset: QuerySet[Message], expression: Any, output_field: Field[Any, Any] | None = None
) -> Subquery:
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

    def lookups(
        self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]
    ) -> Iterable[tuple[str, str]]:
        return Message.Status.choices

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
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
    fields = ("when", "role", "branch", "text", "outcome", "timing", "tokens", "attach_count")
    readonly_fields = fields
    verbose_name = "message"
    verbose_name_plural = "transcript"
    classes = ["transcript"]

    class Media:
        css = {"all": ["conversations/admin.css"]}

    def has_add_permission(self, request: HttpRequest, obj: Conversation | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Conversation | None = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Message]:
        """Every message of every branch, each with its place among its versions (the
        messages with the same parent)."""
        siblings = (
            Message.objects.annotate(follows=Coalesce("parent", 0))
            .filter(conversation=OuterRef("conversation"), follows=Coalesce(OuterRef("parent"), 0))
            .order_by()
            .values("conversation")
        )
        earlier = siblings.filter(
            Q(created_at__lt=OuterRef("created_at"))
            | Q(created_at=OuterRef("created_at"), id__lte=OuterRef("id"))
        )
        annotated: QuerySet[Message] = (
            super()
            .get_queryset(request)
            .annotate(
                version_count=Subquery(siblings.annotate(n=Count("id")).values("n")),
                version_index=Subquery(earlier.annotate(n=Count("id")).values("n")),
            )
        )
        return annotated

    @admin.display(description="follows · version")
    def branch(self, message: WithAnnotations[Message, _Versions]) -> str:
        """Which message this one follows, and which version of its turn it is."""
        follows = f"#{message.parent_id}" if message.parent_id else "start"
        count = getattr(message, "version_count", 1) or 1
        if count == 1:
            return format_html('<span class="nowrap">#{} ← {}</span>', message.pk, follows)
        return format_html(
            '<span class="nowrap">#{} ← {}</span><br><span class="nowrap">version {} of {}</span>',
            message.pk,
            follows,
            message.version_index,
            count,
        )

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
    fields = ("title", "owner", "model", "system_prompt", "created_at", "updated_at")
    readonly_fields = fields
    inlines = [TranscriptInline]
    actions = ["export_json"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Conversation]:
        tokens = Coalesce(F("prompt_tokens"), 0) + Coalesce(F("completion_tokens"), 0)
        last_reply = Message.objects.filter(
            conversation=OuterRef("pk"), role=Message.Role.ASSISTANT
        ).order_by("-created_at", "-id")
        annotated: QuerySet[Conversation] = (
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
        return annotated

    @admin.display(ordering="message_count", description="messages")
    def message_count(self, conversation: WithAnnotations[Conversation, _Totals]) -> int:
        return conversation.message_count

    @admin.display(ordering="total_tokens", description="tokens")
    def total_tokens(self, conversation: WithAnnotations[Conversation, _Totals]) -> int:
        return conversation.total_tokens

    @admin.display(ordering="last_reply_status", description="last reply")
    def last_reply_status(self, conversation: WithAnnotations[Conversation, _Totals]) -> str:
        return conversation.last_reply_status or "–"

    @admin.action(description="Export selected conversations as JSON")
    def export_json(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> HttpResponse:
        body = json.dumps({"conversations": conversations_export(queryset)}, indent=2)
        response = HttpResponse(body, content_type="application/json")
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        response["Content-Disposition"] = f'attachment; filename="conversations-{stamp}.json"'
        return response

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
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

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        dashboard = self.admin_site.admin_view(self.dashboard_view)
        return [
            path("dashboard/", dashboard, name="conversations_message_dashboard"),
            *super().get_urls(),
        ]

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        """How replies went in the last 24 hours and 30 days: per hour or day by status,
        time to first token, tokens per second, upstream errors, top users."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "title": "Replies dashboard",
            "opts": self.model._meta,
            "periods": [dashboard_period(period) for period in reply_dashboard()],
            "statuses": STATUSES,
            "time_zone": timezone.get_current_timezone_name(),
        }
        return TemplateResponse(request, "admin/conversations/dashboard.html", context)


DASHBOARD_UNITS = {
    # unit: (a bucket's label, every how many buckets a label is written under the chart)
    "hour": ("%H:%M", 3),
    "day": ("%d %b", 3),
}


def dashboard_period(period: ReplyPeriod) -> dict:
    """A period of the dashboard as the template shows it: its chart and its figures."""
    label_format, label_every = DASHBOARD_UNITS[period.unit]
    columns = [(b.start.strftime(label_format), b.counts) for b in period.buckets]
    per_second = period.tokens_per_second
    return {
        "period": period,
        "slug": period.unit,
        "chart": stacked_bar_chart(columns, series=STATUSES, label_every=label_every),
        "rows": [
            (label, [counts[s] for s in STATUSES], sum(counts.values()))
            for label, counts in columns
        ],
        "status_totals": list(period.status_totals().items()),
        "ttft_p50": duration_text(
            None if period.ttft_p50_ms is None else round(period.ttft_p50_ms)
        ),
        "ttft_p95": duration_text(
            None if period.ttft_p95_ms is None else round(period.ttft_p95_ms)
        ),
        "tokens_per_second": "–" if per_second is None else f"{per_second:,.1f}",
        "replies": f"{period.replies:,}",
        "completion_tokens": f"{period.completion_tokens:,}",
        "top_users": [(u.username, f"{u.tokens:,}", f"{u.replies:,}") for u in period.top_users],
    }


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "prefix", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["revoked_at", "created_at"]
    list_select_related = ["owner"]
    search_fields = ["name", "owner__username", "prefix"]
    actions = ["revoke"]

    def get_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> tuple[str, ...]:
        if obj is None:
            return ("owner", "name")
        return ("owner", "name", "prefix", "created_at", "last_used_at", "revoked_at")

    def get_readonly_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> list[str]:
        return [] if obj is None else ["owner", "prefix", "created_at", "last_used_at"]

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        token, raw = api_token_create(owner=obj.owner, name=obj.name)
        obj.pk, obj.prefix, obj.digest = token.pk, token.prefix, token_digest(raw)
        messages.warning(request, f"The new token is {raw} — copy it now; it is not shown again.")

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        count = api_tokens_revoke(tokens=queryset)
        self.message_user(request, f"{count} token(s) revoked.")


@admin.register(UsageDay)
class UsageDayAdmin(admin.ModelAdmin):
    """Tokens per user, model and UTC day, read-only; the list says what the rows shown add
    up to (filter by user, model or day for their totals)."""

    list_display = [
        "day", "user", "model", "prompt_tokens", "completion_tokens", "total_tokens", "replies",
        "estimated_tokens",
    ]  # fmt: skip
    list_select_related = ["user"]
    list_filter = [("user", admin.RelatedOnlyFieldListFilter), "model", "day"]
    search_fields = ["user__username", "model"]
    date_hierarchy = "day"

    def get_queryset(self, request: HttpRequest) -> QuerySet[UsageDay]:
        total = F("prompt_tokens") + F("completion_tokens")
        annotated: QuerySet[UsageDay] = super().get_queryset(request).annotate(total=total)
        return annotated

    @admin.display(ordering="total", description="total tokens")
    def total_tokens(self, usage: WithAnnotations[UsageDay, _UsageTotal]) -> int:
        return usage.total

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None)
        if context is not None and "cl" in context:
            context["usage_totals"] = (
                context["cl"]
                .queryset.order_by()
                .aggregate(
                    prompt=Coalesce(Sum("prompt_tokens"), 0),
                    completion=Coalesce(Sum("completion_tokens"), 0),
                    replies=Coalesce(Sum("replies"), 0),
                    estimated=Coalesce(Sum("estimated_tokens"), 0),
                )
            )
        return response

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: UsageDay | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: UsageDay | None = None) -> bool:
        return False


@admin.register(UserQuota)
class UserQuotaAdmin(admin.ModelAdmin):
    list_display = ["user", "daily_tokens"]
    list_select_related = ["user"]
    search_fields = ["user__username"]
    autocomplete_fields = ["user"]


class UserQuotaInline(admin.StackedInline):
    model = UserQuota
    can_delete = True
    extra = 0
    max_num = 1
    verbose_name_plural = "daily token quota (leave none for the site's CHAT_DAILY_TOKEN_QUOTA)"


class UserWithQuotaAdmin(UserAdmin):
    """Django's user admin, with the user's own daily token quota."""

    inlines = [*UserAdmin.inlines, UserQuotaInline]


admin.site.unregister(get_user_model())
admin.site.register(get_user_model(), UserWithQuotaAdmin)
