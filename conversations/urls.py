from django.urls import path, register_converter

from . import views
from .inputs import MAX_ID


class RowIdConverter:
    """A row id: ASCII digits up to the largest id a row can have; any other is no match (404)
    rather than a query the database refuses."""

    regex = "[0-9]{1,19}"

    def to_python(self, value: str) -> int:
        number = int(value)
        if not 1 <= number <= MAX_ID:
            raise ValueError(value)
        return number

    def to_url(self, value: int) -> str:
        return str(value)


register_converter(RowIdConverter, "id")

urlpatterns = [
    path("", views.chat, name="home"),
    path("c/<id:conversation_id>/", views.chat, name="conversation"),
    path(
        "c/<id:conversation_id>/messages/<id:message_id>/",
        views.message_fragment,
        name="message-fragment",
    ),
    path("accounts/signup/", views.signup, name="signup"),
    path("api/chat/stream", views.chat_stream, name="chat-stream"),
    path("api/conversations", views.conversation_list, name="api-conversation-list"),
    path(
        "api/conversations/<id:conversation_id>",
        views.conversation_detail_view,
        name="api-conversation-detail",
    ),
    path("api/messages/<id:message_id>/cancel", views.message_cancel, name="api-message-cancel"),
    path("api/messages/<id:message_id>/stream", views.message_stream, name="api-message-stream"),
    path("api/messages/<id:message_id>/show", views.message_show, name="api-message-show"),
    path("api/models", views.model_list, name="api-model-list"),
    path("api/usage", views.usage, name="api-usage"),
    path("api/diagnostics/stream", views.diagnostics_stream, name="api-diagnostics-stream"),
    path("api/openapi.json", views.openapi_json, name="api-openapi"),
]
