"""The web console at `/`: one static page (api/static/) that talks to the JSON API and the SSE feed.

Plain HTML, JavaScript and CSS served as files: nothing to build, nothing to install in the
browser. The page uses only the public API, so it is also a working example of a front end.

Cell output is written by untrusted code, and the page holds the token: so the page and its
files are served with a Content-Security-Policy that runs no script but console.js (nothing
inline, nothing from elsewhere), and console.js puts HTML output in sandboxed frames.
"""

from __future__ import annotations

from flask import Blueprint, Response, send_from_directory

blueprint = Blueprint("console", __name__, static_folder="static", static_url_path="/console/static")

# Output frames (srcdoc, sandboxed) inherit this policy too: no script runs in them, their
# images are data: URLs (or this server's), and they cannot navigate or submit forms anywhere.
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "frame-src 'self'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
    "form-action 'none'",
])
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@blueprint.get("/")
def index():
    return send_from_directory(blueprint.static_folder, "index.html", max_age=0)


@blueprint.after_request
def security_headers(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response
