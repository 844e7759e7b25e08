from django.conf import settings


def site(request):
    return {"signup_enabled": settings.CHAT_SIGNUP_ENABLED}
