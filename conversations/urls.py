from django.urls import path

from . import views

urlpatterns = [
    path("", views.chat, name="home"),
    path("c/<int:conversation_id>/", views.chat, name="conversation"),
    path(
        "c/<int:conversation_id>/messages/<int:message_id>/",
        views.message_fragment,
        name="message-fragment",
    ),
    path("accounts/signup/", views.signup, name="signup"),
    path("api/chat/stream", views.chat_stream, name="chat-stream"),
    path("api/conversations", views.conversation_list, name="api-conversation-list"),
    path(
        "api/conversations/<int:conversation_id>",
        views.conversation_detail_view,
        name="api-conversation-detail",
    ),
    path("api/messages/<int:message_id>/cancel", views.message_cancel, name="api-message-cancel"),
    path("api/openapi.json", views.openapi_json, name="api-openapi"),
]
