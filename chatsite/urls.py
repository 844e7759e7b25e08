from django.contrib import admin
from django.http import HttpRequest, HttpResponseRedirect
from django.templatetags.static import static
from django.urls import include, path

from chatsite.health import healthz, readyz
from chatsite.metrics import metrics
from conversations.views import admin_sign_in, sign_in


async def favicon(request: HttpRequest) -> HttpResponseRedirect:
    """Browsers ask for /favicon.ico whatever the page links: send them to the static copy
    (its name carries its hash, so only this redirect is short-lived)."""
    response = HttpResponseRedirect(static("favicon.ico"))
    response["Cache-Control"] = "public, max-age=86400"
    return response


urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics, name="metrics"),
    path("favicon.ico", favicon),
    # Ahead of the admin's and Django's auth URLs: the same sign-in views, their POSTs counted
    # together (conversations.attempts).
    path("admin/login/", admin_sign_in),
    path("admin/", admin.site.urls),
    path("accounts/login/", sign_in, name="login"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("conversations.urls")),
]

handler404 = "conversations.views.page_not_found"
handler500 = "conversations.views.server_error"
