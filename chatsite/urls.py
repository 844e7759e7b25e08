from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("conversations.urls")),
]

handler404 = "conversations.views.page_not_found"
handler500 = "conversations.views.server_error"
