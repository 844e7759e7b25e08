"""The OpenAPI document describes exactly the /api/ routes the code serves."""

from __future__ import annotations

import re

import httpx
from django.urls import URLPattern, URLResolver, get_resolver

DOCUMENT_ITSELF = "/api/openapi.json"


def api_routes() -> dict[str, set[str]]:
    """Every /api/ path in the URL configuration, in OpenAPI form, with its allowed methods."""
    routes: dict[str, set[str]] = {}

    def walk(patterns, prefix: str) -> None:
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, route)
            elif isinstance(pattern, URLPattern) and route.startswith("api/"):
                path = "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)
                methods = getattr(pattern.callback, "allowed_methods", ("GET",))
                routes[path] = {method.lower() for method in methods}

    walk(get_resolver().url_patterns, "")
    return routes


def test_openapi_document_lists_every_api_route_and_method_and_nothing_else(server):
    response = httpx.get(server.url + DOCUMENT_ITSELF)

    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    documented = {
        path: {key for key in operations if key != "parameters"}
        for path, operations in document["paths"].items()
    }
    routes = api_routes()
    routes.pop(DOCUMENT_ITSELF)
    assert documented == routes


def test_every_operation_documents_its_success_and_error_responses(server):
    document = httpx.get(server.url + DOCUMENT_ITSELF).json()

    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            codes = set(operation["responses"])
            assert codes & {"200", "204"}, (path, method)
            assert {"401", "429"} <= codes, (path, method)
    stream = document["paths"]["/api/chat/stream"]["post"]
    assert {"400", "403", "404", "405", "413", "415"} <= set(stream["responses"])
    assert "text/event-stream" in stream["responses"]["200"]["content"]
    request = document["components"]["schemas"]["ChatRequest"]["properties"]
    assert request["message"]["maxLength"] == 32_000
    assert request["history"]["maxItems"] == 100
