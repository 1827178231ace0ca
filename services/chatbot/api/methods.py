"""Which methods a path has, read from the app's own OpenAPI document: what a 405's `Allow`
header lists, and what keeps `POST /{gpt_set}` off the paths that are not GPT names.

The router alone gets both wrong: its 405 names the methods of the first route whose path
matches, and `/{gpt_set}` (POST) matches every one-segment path, so `OPTIONS /healthz`
answered `405 Allow: POST` and `POST /healthz` went to the GPT route. A literal path of the
document (`/healthz`) is that path's, whatever template also matches it.
"""

from __future__ import annotations

import re
from functools import cache

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException

_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def route_path(request: Request) -> str:
    """The request's path inside its app (a mount's prefix removed)."""
    path, root = request.scope["path"], request.scope.get("root_path", "")
    if root and path.startswith(root + "/"):
        return path[len(root):]
    return path


@cache
def _template(path: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^/{}]+\})", path)
    return re.compile("".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts))


def _app_paths(app: FastAPI) -> set[str]:
    """The app's own pages outside the document (its OpenAPI JSON and docs pages)."""
    return {p for p in (app.openapi_url, app.docs_url, app.redoc_url,
                        app.swagger_ui_oauth2_redirect_url) if p}


def documented_methods(app: FastAPI, path: str) -> list[str] | None:
    """The methods the OpenAPI document gives `path` (upper case, sorted); None when the
    document has no such path. A literal path wins over the templates that match it."""
    if path in _app_paths(app):
        return ["GET", "HEAD"]
    paths = app.openapi().get("paths", {})
    if path in paths:
        items = [paths[path]]
    else:
        items = [item for template, item in paths.items()
                 if "{" in template and _template(template).fullmatch(path)]
    if not items:
        return None
    return sorted({m.upper() for item in items for m in item if m in _METHODS})


def allow_header(request: Request, given: str | None) -> str | None:
    """A 405's `Allow`: the document's methods for the path, or (a page outside the
    document) what the router said."""
    methods = documented_methods(request.app, route_path(request))
    return ", ".join(methods) if methods is not None else given


def not_a_literal_path(request: Request) -> None:
    """For a templated route (`/{gpt_set}`): a path the document (or the app's own pages)
    has literally is not this route's; its other methods are named in a 405."""
    app: FastAPI = request.app
    path = route_path(request)
    if path in app.openapi().get("paths", {}) or path in _app_paths(app):
        raise HTTPException(405)
