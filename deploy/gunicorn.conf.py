"""gunicorn settings for the API: `gunicorn -c deploy/gunicorn.conf.py api.wsgi:app`.

Read from the environment because gunicorn runs this file itself: API_BIND (default
127.0.0.1:8000, loopback unless an operator decides otherwise), API_WORKERS, API_THREADS,
API_TIMEOUT_SECONDS. The app's own settings come from `Settings.from_env` in `api.wsgi`.
"""

from __future__ import annotations

import os

# Loopback by default: exposing the API is an explicit operator decision (a proxy in front).
bind = os.environ.get("API_BIND", "127.0.0.1:8000")  # noqa: TID251
# Two processes per core is gunicorn's usual start for a thin I/O-bound app; 2 on this 2-core
# target keeps memory low, and operators scale with API_WORKERS.
workers = int(os.environ.get("API_WORKERS", "2"))  # noqa: TID251
# Each request waits on PostgreSQL, Redis and the broker; a few threads per worker overlap that.
threads = int(os.environ.get("API_THREADS", "4"))  # noqa: TID251
worker_class = "gthread"
# Seconds: every request finishes in milliseconds except streamed downloads, which gunicorn's
# gthread worker does not time out while bytes flow; this only kills a wedged worker.
timeout = int(os.environ.get("API_TIMEOUT_SECONDS", "60"))  # noqa: TID251
graceful_timeout = 30
keepalive = 5
# The app logs each request itself (JSON with the request id); gunicorn's own access log would
# duplicate it.
accesslog = None
errorlog = "-"
# Bytes of the request line (gunicorn's default, stated): API URLs are under 200 bytes; longer
# lines get gunicorn's own 414, documented in the OpenAPI document.
limit_request_line = 4094
# Only these headers from a proxy on loopback are trusted for the client address.
forwarded_allow_ips = "127.0.0.1"
