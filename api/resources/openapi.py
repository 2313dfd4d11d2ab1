"""GET /openapi.json: the API's OpenAPI 3.1 document, serialized once."""

from __future__ import annotations

from typing import Any

import falcon
import orjson


class OpenApiResource:
    """Serve a prebuilt OpenAPI document."""

    auth_required = False

    def __init__(self, spec: dict[str, Any]) -> None:
        self._body = orjson.dumps(spec)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Answer the document."""
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self._body
