from django import template
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from conversations.markdown import render_markdown
from conversations.services import INTERRUPTED_MESSAGE

register = template.Library()


@register.filter(name="markdown")
def markdown_filter(text: str) -> SafeString:
    return render_markdown(text)


@register.filter(name="exact_attribute")
def exact_attribute_filter(text: str) -> SafeString:
    """``text`` escaped for an attribute value that reads back exactly, carriage returns too
    (an HTML parser turns a raw CR or CRLF into LF)."""
    return mark_safe(escape(text).replace("\r", "&#13;"))  # noqa: S308 - escaped just before


@register.simple_tag
def interrupted_note() -> str:
    """The note under a reply its server stopped before it finished, in the words saved with
    it (INTERRUPTED_MESSAGE)."""
    return f"Interrupted: {INTERRUPTED_MESSAGE[:1].lower()}{INTERRUPTED_MESSAGE[1:]}"
