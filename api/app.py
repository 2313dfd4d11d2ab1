"""The Falcon application: `create_app(deps)` wires collaborators, `get_app()` builds them.

`create_app` is pure wiring, so tests hand it in-memory or real collaborators as they please.
`get_app` is the one place the API reads the environment: it parses `Settings`, configures
logging and builds the real database, Redis limiter, broker dispatcher and S3 store.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import falcon

from api.auth import (
    AuthMiddleware,
    InternalCredential,
    TokenVerifier,
    internal_credential_from_settings,
    verifier_from_settings,
)
from api.database import Database, ThreadLocalDatabase
from api.dispatch import Dispatcher
from api.metrics import ApiMetrics, MetricsMiddleware, storage_used_bytes
from api.middleware import BodyLimitMiddleware, ContentTypeMiddleware, RequestContextMiddleware
from api.objects import ObjectStore, S3ObjectStore
from api.openapi import build_spec
from api.problems import install_problem_handlers
from api.queries import health_metrics
from api.resources.downloads import DownloadResource
from api.resources.exports import (
    CleanupResource,
    ExportListResource,
    ExportRequestResource,
    ExportStatusResource,
    ExportVerifyResource,
)
from api.resources.health import Check, HealthResource, ReadyResource
from api.resources.metrics import MetricsResource
from api.resources.openapi import OpenApiResource
from api.resources.schedule_requests import ScheduleRequestResource, ScheduleRequestsResource
from api.resources.scheduler_trigger import ProcessScheduledResource
from api.resources.schedules import ScheduleResource, SchedulesResource, ScheduleStateResource
from api.resources.stats import StatsResource
from api.submission import ExportSubmitter, Limiter
from pipelines.settings import Settings
from workers.scheduling.process import PassRunner

App = falcon.App[falcon.Request, falcon.Response]


@dataclass(frozen=True)
class AppDeps:
    """Everything the API talks to."""

    settings: Settings
    verifier: TokenVerifier
    internal: InternalCredential
    database: Database
    limiter: Limiter
    dispatcher: Dispatcher
    objects: ObjectStore
    checks: Mapping[str, Check]
    metrics: ApiMetrics = field(default_factory=ApiMetrics)
    # Runs one scheduling pass for POST /api/exports/process-scheduled; None answers 503.
    scheduler: PassRunner | None = None


def create_app(deps: AppDeps) -> App:
    """Return the API with every route, middleware and error handler wired to `deps`."""
    app: App = falcon.App(
        middleware=[
            RequestContextMiddleware(),
            MetricsMiddleware(deps.metrics),
            BodyLimitMiddleware(),
            AuthMiddleware(deps.verifier, deps.internal),
            ContentTypeMiddleware(),
        ],
        cors_enable=False,
    )
    install_problem_handlers(app)
    dispatcher = deps.dispatcher
    submitter = ExportSubmitter(
        deps.database,
        deps.limiter,
        enqueue_user=lambda export_id, request_id: dispatcher.enqueue_user_export(
            export_id, request_id=request_id
        ),
        enqueue_bulk=lambda export_id, request_id: dispatcher.enqueue_bulk_export(
            export_id, request_id=request_id
        ),
    )
    settings = deps.settings
    database = deps.database
    app.add_route(
        "/api/exports/user", ExportRequestResource(submitter, settings, export_type="user")
    )
    app.add_route(
        "/api/exports/bulk", ExportRequestResource(submitter, settings, export_type="bulk")
    )
    app.add_route("/api/exports/cleanup", CleanupResource(database, dispatcher))
    app.add_route("/api/exports/stats", StatsResource(database))
    app.add_route("/api/exports", ExportListResource(database))
    app.add_route("/api/exports/{export_id}/status", ExportStatusResource(database))
    app.add_route(
        "/api/exports/{export_id}/download", DownloadResource(database, deps.objects, settings)
    )
    app.add_route("/api/exports/{export_id}/verify", ExportVerifyResource(database, dispatcher))
    app.add_route(
        "/api/exports/schedule", ScheduleRequestsResource(database, deps.limiter, settings)
    )
    app.add_route("/api/exports/schedule/{request_id}", ScheduleRequestResource(database))
    app.add_route("/api/exports/schedules", SchedulesResource(database, deps.limiter, settings))
    app.add_route("/api/exports/schedules/{schedule_id}", ScheduleResource(database))
    app.add_route(
        "/api/exports/schedules/{schedule_id}/pause",
        ScheduleStateResource(database, paused=True),
    )
    app.add_route(
        "/api/exports/schedules/{schedule_id}/resume",
        ScheduleStateResource(database, paused=False),
    )
    app.add_route("/api/exports/process-scheduled", ProcessScheduledResource(deps.scheduler))
    app.add_route("/healthz", HealthResource())
    app.add_route("/readyz", ReadyResource(deps.checks))
    app.add_route("/metrics", MetricsResource(deps.metrics))
    app.add_route("/openapi.json", OpenApiResource(build_spec()))
    return app


def get_app(environ: Mapping[str, str] | None = None) -> App:
    """Build the real collaborators from the environment and return the app."""
    # Imported here so that `api` loads without the workers package's broker libraries, and
    # tests that wire their own collaborators never construct a broker.
    from api.checks import broker_check, redis_check
    from api.ratelimit import RateLimiter, create_redis
    from api.schedule_policy import scheduler_for
    from pipelines.logs import configure_logging
    from pipelines.storage.client import s3_client_from_settings
    from workers.broker import create_broker
    from workers.dispatch import Dispatcher as BrokerDispatcher
    from workers.queue_stats import queue_reader

    # The entry point: the one place the API reads the environment.
    settings = Settings.from_env(os.environ if environ is None else environ)  # noqa: TID251
    configure_logging(level=settings.log_level, log_format=settings.log_format)
    database = ThreadLocalDatabase(settings.database_url)
    redis_client = create_redis(settings.redis_url)
    limiter = RateLimiter(
        redis_client,
        limit=settings.export_rate_limit,
        admin_limit=settings.export_admin_rate_limit,
    )

    def read_health() -> Mapping[str, object]:
        with database.transaction() as conn:
            return health_metrics(conn)

    def read_storage() -> int:
        with database.transaction() as conn:
            return storage_used_bytes(conn)

    broker_dispatcher = BrokerDispatcher(create_broker(settings.effective_broker_url))
    deps = AppDeps(
        settings=settings,
        verifier=verifier_from_settings(settings),
        internal=internal_credential_from_settings(settings),
        database=database,
        limiter=limiter,
        dispatcher=broker_dispatcher,
        objects=S3ObjectStore(s3_client_from_settings(settings), bucket=settings.s3_bucket),
        checks={
            "database": database.ping,
            "broker": broker_check(settings.effective_broker_url),
            "rateLimiter": redis_check(redis_client),
        },
        # Backlog gauges come from the API only, so workers scaling out do not multiply them.
        metrics=ApiMetrics(
            read_health,
            read_queues=queue_reader(settings.effective_broker_url),
            read_storage=read_storage,
        ),
        scheduler=scheduler_for(settings, queue=broker_dispatcher, limiter=limiter),
    )
    return create_app(deps)
