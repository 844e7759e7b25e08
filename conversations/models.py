from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVector
from django.db import models
from django.utils import timezone

SEARCH_CONFIG = "simple"
"""The text search configuration: no stemming and no stop words, so any language works."""


def title_vector() -> SearchVector:
    """A conversation's title as a text search document (the expression its index holds)."""
    return SearchVector("title", config=SEARCH_CONFIG)


def content_vector() -> SearchVector:
    """A message's text as a text search document (the expression its index holds)."""
    return SearchVector("content", config=SEARCH_CONFIG)


class Conversation(models.Model):
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    title = models.CharField(max_length=200, blank=True)
    system_prompt = models.TextField(blank=True, help_text="Sent first in every prompt.")
    model = models.CharField(max_length=200, blank=True, help_text="The model that answers.")
    # Given by the service that saves it (one time for a conversation and its first messages),
    # else the time of saving: a given value is kept, which auto_now_add would overwrite.
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True, help_text="Last activity.")
    current_leaf = models.ForeignKey(
        "Message",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="The last message of the path shown (a version picked); empty: the latest.",
    )

    class Meta:
        ordering = ["-updated_at", "-id"]
        indexes = [
            models.Index(fields=["owner", "-updated_at"], name="conversation_owner_recent"),
            models.Index(fields=["-updated_at"], name="conversation_recent"),
            GinIndex(title_vector(), name="conversation_title_search"),
        ]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user", "User"
        ASSISTANT = "assistant", "Assistant"

    class Status(models.TextChoices):
        STREAMING = "streaming", "Streaming"
        COMPLETE = "complete", "Complete"
        CANCELLED = "cancelled", "Cancelled"
        ERROR = "error", "Error"
        INTERRUPTED = "interrupted", "Interrupted"

    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    parent = models.ForeignKey(
        "self",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="children",
        help_text="The message this one follows; messages with the same parent are versions "
        "(a regenerated reply, an edited message). Empty for a conversation's first message.",
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    model = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    finished_at = models.DateTimeField(null=True, blank=True)
    ttft_ms = models.PositiveIntegerField(
        null=True, blank=True, help_text="Time from the upstream call to the first token."
    )
    duration_ms = models.PositiveIntegerField(
        null=True, blank=True, help_text="Time from the upstream call to the end of the reply."
    )
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    finish_reason = models.CharField(max_length=32, blank=True)
    error_code = models.CharField(
        max_length=64,
        blank=True,
        help_text="Why a reply that did not complete ended: stopped, client_left, "
        "stream_timeout, reply_too_long, interrupted, an upstream error…",
    )
    error_message = models.TextField(blank=True)
    attach_count = models.PositiveIntegerField(
        default=0,
        help_text="How many times a client resumed or joined this reply while it ran "
        "(a reload, a reconnect, another tab).",
    )

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(fields=["conversation", "created_at"], name="message_transcript"),
            models.Index(fields=["status", "created_at"], name="message_status_recent"),
            models.Index(fields=["-created_at"], name="message_recent"),
            GinIndex(content_vector(), name="message_content_search"),
        ]

    def __str__(self) -> str:
        preview = self.content[:60] + ("…" if len(self.content) > 60 else "")
        return f"{self.get_role_display()}: {preview}"


class ApiToken(models.Model):
    """A bearer token for REST clients; only its SHA-256 digest is stored."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100, blank=True, help_text="What the token is for.")
    prefix = models.CharField(
        max_length=12, editable=False, help_text="The token's first characters, to recognise it."
    )
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(
        null=True, blank=True, help_text="Set to revoke: the token stops working at once."
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name or 'token'} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class UsageDay(models.Model):
    """The tokens one user's replies used with one model on one UTC day: one row, added to
    once per finished reply (never per token)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="usage_days"
    )
    day = models.DateField(help_text="The UTC date the replies ended on.")
    model = models.CharField(max_length=200)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    replies = models.PositiveIntegerField(default=0, help_text="Replies that ended this day.")
    estimated_replies = models.PositiveIntegerField(
        default=0, help_text="Replies whose usage the upstream did not report (estimated)."
    )
    estimated_tokens = models.PositiveBigIntegerField(
        default=0,
        help_text="How many of the prompt and completion tokens are estimates, not the "
        "upstream's count.",
    )

    class Meta:
        ordering = ["-day", "user", "model"]
        verbose_name = "usage (user, model, day)"
        verbose_name_plural = "usage"
        constraints = [
            models.UniqueConstraint(fields=["user", "day", "model"], name="usage_day_user_model")
        ]
        indexes = [models.Index(fields=["-day"], name="usage_day_recent")]

    def __str__(self) -> str:
        return f"{self.user_id} {self.day} {self.model}: {self.total_tokens} tokens"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class UserQuota(models.Model):
    """A user's own daily token quota, in place of CHAT_DAILY_TOKEN_QUOTA."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="token_quota"
    )
    daily_tokens = models.PositiveBigIntegerField(
        help_text="Tokens (prompt and completion) this user may use per UTC day, in place of "
        "the site's CHAT_DAILY_TOKEN_QUOTA. 0: no limit for this user."
    )

    class Meta:
        ordering = ["user"]
        verbose_name = "daily token quota"

    def __str__(self) -> str:
        limit = "no limit" if not self.daily_tokens else f"{self.daily_tokens} tokens a day"
        return f"{self.user}: {limit}"
