from django.urls import path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("api/chat/stream", views.chat_stream, name="chat-stream"),
]
