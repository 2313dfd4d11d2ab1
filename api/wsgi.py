"""The WSGI entry point gunicorn loads: `gunicorn -c deploy/gunicorn.conf.py api.wsgi:app`.

Building the app here, at import, is what an entry point is for: gunicorn imports this module in
each worker (no `preload_app`), so every worker opens its own connections.
"""

from __future__ import annotations

from api.app import get_app

app = get_app()
