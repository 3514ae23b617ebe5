"""The web console at `/`: one static page (api/static/) that talks to the JSON API and the SSE feed.

Plain HTML, JavaScript and CSS served as files: nothing to build, nothing to install in the
browser. The page uses only the public API, so it is also a working example of a front end.
"""

from __future__ import annotations

from flask import Blueprint, send_from_directory

blueprint = Blueprint("console", __name__, static_folder="static", static_url_path="/console/static")


@blueprint.get("/")
def index():
    return send_from_directory(blueprint.static_folder, "index.html", max_age=0)
