"""API docs that render on a cluster without internet: Swagger UI (`/docs`) and ReDoc
(`/redoc`) with their scripts, stylesheet and favicon served by the service itself.

The assets come from the `fastapi-offline` package, which bundles them (so they follow its
releases rather than a copy kept here); the pages are fastapi's own. This module serves
them as plain routes rather than through fastapi-offline's static mount, because a mount
does not find its files when a proxy strips the prefix and the app has `root_path` set
(the route's `/office` -> `/` with `CHATBOT_ROOT_PATH=/office`). Two requests the bundles
would still make to the internet are removed:

- ReDoc's sidebar draws Redocly's logo from Redocly's CDN: the bundle is served with that
  image inlined (an empty SVG).
- Swagger UI shows the online validator's badge (an image from validator.swagger.io that
  also sends it the document's address) on any host but localhost: it is switched off.

Every asset path carries the request's `root_path`, so behind the route's prefixes the
pages load from, and "Try it out" calls, `/office/...` and `/character/...`.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse, Response

STATIC_URL = "/static-offline-docs"
_ASSETS = {  # file in fastapi-offline's static folder -> media type
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}
REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
_EMPTY_SVG = b"data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg'/%3E"


@cache
def asset(name: str) -> bytes:
    """A packaged asset; ReDoc's bundle with its one remote image inlined."""
    data = files("fastapi_offline").joinpath("static", name).read_bytes()
    return data.replace(REDOC_LOGO, _EMPTY_SVG) if name == "redoc.standalone.js" else data


def _asset_route(app: FastAPI, name: str, media_type: str) -> None:
    @app.get(f"{STATIC_URL}/{name}", include_in_schema=False)
    async def packaged_asset() -> Response:
        return Response(asset(name), media_type=media_type,
                        headers={"Cache-Control": "public, max-age=86400"})


def _prefixed(request: Request):
    """A path as the browser must ask for it: behind the route's stripped prefix
    (`root_path`, e.g. /office), or as is."""
    root = request.scope.get("root_path", "")
    return lambda path: f"{root}{path}"


def offline_docs(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Adds Swagger UI, ReDoc and their assets to an app made with `docs_url=None,
    redoc_url=None` (fastapi's own pages would load them from a CDN)."""
    oauth2_redirect_url = f"{docs_url}/oauth2-redirect"
    # Without a validator, Swagger UI draws no badge, so it asks no other host.
    parameters = {**(app.swagger_ui_parameters or {}), "validatorUrl": None}

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        at = _prefixed(request)
        return get_swagger_ui_html(
            openapi_url=at(app.openapi_url), title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=at(oauth2_redirect_url),
            swagger_js_url=at(f"{STATIC_URL}/swagger-ui-bundle.js"),
            swagger_css_url=at(f"{STATIC_URL}/swagger-ui.css"),
            swagger_favicon_url=at(f"{STATIC_URL}/favicon.png"),
            swagger_ui_parameters=parameters)

    @app.get(oauth2_redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(redoc_url, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        at = _prefixed(request)
        return get_redoc_html(
            openapi_url=at(app.openapi_url), title=f"{app.title} - ReDoc",
            redoc_js_url=at(f"{STATIC_URL}/redoc.standalone.js"),
            redoc_favicon_url=at(f"{STATIC_URL}/favicon.png"), with_google_fonts=False)

    for name, media_type in _ASSETS.items():
        _asset_route(app, name, media_type)
