"""API docs that render on a cluster without internet.

`fastapi-offline` (the app class, see server.py) serves Swagger UI, its stylesheet, ReDoc's
bundle and the favicon from its package instead of a CDN. Two requests would still leave
for the internet, and this module removes them:

- ReDoc's sidebar draws Redocly's logo from Redocly's CDN: `/redoc` here is fastapi's
  ReDoc page on a copy of the packaged bundle with that image inlined (an empty SVG).
- Swagger UI shows the online validator's badge (an image from validator.swagger.io that
  also sends it the document's address) on any host but localhost: it is switched off.

Every asset path carries the request's `root_path`, so behind the route's `/office` and
`/character` prefixes the pages load from, and "Try it out" calls, the prefixed paths.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html
from fastapi.responses import HTMLResponse, Response

REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
_EMPTY_SVG = b"data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg'/%3E"
# The packaged assets (fastapi-offline serves them under STATIC_URL of each persona).
STATIC_URL = "/static-offline-docs"
REDOC_URL = "/redoc"
REDOC_JS_URL = f"{REDOC_URL}/redoc.standalone.js"


@cache
def redoc_bundle() -> bytes:
    """fastapi-offline's ReDoc bundle, its one remote image inlined."""
    js = files("fastapi_offline").joinpath("static/redoc.standalone.js").read_bytes()
    if REDOC_LOGO not in js:  # a newer bundle: nothing to replace (tests/browser checks)
        return js
    return js.replace(REDOC_LOGO, _EMPTY_SVG)


def offline_docs(app: FastAPI) -> None:
    """Adds ReDoc (`/redoc`, with its bundle) to an app made by `FastAPIOffline(...,
    redoc_url=None)`, and turns Swagger UI's online validator off."""
    app.swagger_ui_parameters = {**(app.swagger_ui_parameters or {}), "validatorUrl": None}

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc_page(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(openapi_url=f"{root}{app.openapi_url}",
                              title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{root}{REDOC_JS_URL}",
                              redoc_favicon_url=f"{root}{STATIC_URL}/favicon.png",
                              with_google_fonts=False)

    @app.get(REDOC_JS_URL, include_in_schema=False)
    async def redoc_js() -> Response:
        return Response(redoc_bundle(), media_type="text/javascript",
                        headers={"Cache-Control": "public, max-age=86400"})
