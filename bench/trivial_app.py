"""The baseline of the API benchmark: a Falcon app with one trivial endpoint and nothing else.

`bench/api_bench.py` serves it with the API's own gunicorn configuration, so the gap between this
app's requests/s and an API endpoint's is what the API's work (auth, database, Redis, broker)
costs. It has no middleware, no database and no logging on purpose.
"""

from __future__ import annotations

import falcon

PING_PATH = "/ping"
# A small JSON body, about the size of `/healthz`'s answer.
PING_BODY = b'{"status":"ok"}'


class PingResource:
    """Answer GET with a constant JSON document."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Return the constant body."""
        resp.content_type = falcon.MEDIA_JSON
        resp.data = PING_BODY


def create_app() -> falcon.App[falcon.Request, falcon.Response]:
    """Return the trivial app."""
    app: falcon.App[falcon.Request, falcon.Response] = falcon.App()
    app.add_route(PING_PATH, PingResource())
    return app


app = create_app()
