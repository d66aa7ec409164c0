"""The route table (chatnode/routes.py) is the one definition of the API: the Tornado routes,
the access table and the OpenAPI paths derived from it are one set, with no method served
without a rule and no rule or document entry without a handler."""

from __future__ import annotations

import re

import pytest
from tornado.web import RequestHandler

from chatnode import http, routes
from chatnode.openapi import openapi_document

METHODS = ("GET", "POST", "PUT")


def _served() -> set[tuple[str, str]]:
    """(method, OpenAPI path) for every method a bound REST handler implements."""
    served = set()
    for pattern, handler, _ in routes.url_specs({}, {}):
        if not issubclass(handler, http.JsonHandler):
            continue
        assert re.sub(r"\([^)]*\)", "{id}", pattern) == handler.route
        for method in METHODS:
            if getattr(handler, method.lower()) is not getattr(RequestHandler, method.lower()):
                served.add((method, handler.route))
    return served


def test_routes_access_and_openapi_are_one_set() -> None:
    documented = {(method.upper(), path)
                  for path, item in openapi_document()["paths"].items() for method in item}
    assert _served() == set(routes.REST) == documented


def test_each_handler_learns_its_path_and_rules_from_its_one_entry() -> None:
    handlers = [route.handler for route in routes.ROUTES]
    assert len(handlers) == len(set(handlers))
    paths = [route.path for route in routes.ROUTES]
    assert len(paths) == len(set(paths))
    routes.url_specs({}, {})
    for route in routes.ROUTES:
        if issubclass(route.handler, http.JsonHandler):
            assert route.handler.route == route.path
            assert route.handler.access_rules == {
                method: routes.REST[(method, route.path)] for method in route.operations}
        else:
            assert not route.operations  # sockets: access.WS decides per frame


def test_a_handler_outside_the_table_has_no_rule() -> None:
    class Unlisted(http.JsonHandler):
        def get(self) -> None:
            pass

    assert Unlisted.access_rules.get("GET") is None  # prepare answers 403


@pytest.mark.parametrize(("path", "url", "matches"), [
    ("/api/v1/conversations/{id}/messages", "/api/v1/conversations/0a1b/messages", True),
    ("/api/v1/conversations/{id}/messages", "/api/v1/conversations/XYZ/messages", False),
    ("/api/v1/agents/{id}/role", "/api/v1/agents/42/role", True),
    ("/api/v1/agents/{id}/role", "/api/v1/agents/4x/role", False),
    ("/api/v1/me", "/api/v1/me/totp", False),
])
def test_path_templates_become_tornado_patterns(path: str, url: str, matches: bool) -> None:
    route = next(r for r in routes.ROUTES if r.path == path)
    assert bool(re.fullmatch(route.pattern, url)) is matches
