"""Markdown for saved assistant replies: rendered on the server, then sanitised."""

from __future__ import annotations

import nh3
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt

_renderer = MarkdownIt("commonmark", {"html": False, "breaks": True}).enable(
    ["table", "strikethrough"]
)

ALLOWED_TAGS = {
    "p", "br", "hr", "strong", "em", "del", "code", "pre", "blockquote", "a",
    "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6",
    "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "code": {"class"}, "ol": {"start"}}
URL_SCHEMES = {"http", "https", "mailto"}
# The page renders a streaming reply with the same rules and allow-list:
# static/conversations/render.js (tests/test_chat_rendering.py keeps the copies equal).


def render_markdown(text: str) -> SafeString:
    """HTML with no script, no event handlers, no images and only http(s)/mailto links.

    markdown-it escapes raw HTML and refuses ``javascript:`` links itself; nh3 (an allow-list
    sanitiser) is the second, independent line of defence.
    """
    html = _renderer.render(text)
    clean = nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        link_rel="noopener noreferrer nofollow",
    )
    return mark_safe(clean)  # noqa: S308 - sanitised by nh3 just above
