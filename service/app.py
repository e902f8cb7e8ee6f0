"""The app factory: ``create_app(settings, store)`` wires settings, store, compute, metrics,
routes, error handlers and middleware into one FastAPI app.

Everything a request needs is attached to ``app.state`` when the app is built, so requests
work without the lifespan having run (httpx's ASGI transport does not run it); the lifespan
only adds the background reaper and closes the store on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.telemetry import TelemetryConfig
from fastapi_offline import FastAPIOffline
from starlette.types import ASGIApp

from engine import compiled
from poolgrad._version import __version__
from service import openapi, routes, v2
from service.compute import Compute
from service.errors import StoreUnavailable
from service.hotroutes import HotRoutes
from service.httpio import BodyBudget
from service.metrics import Metrics
from service.middleware import RequestMiddleware
from service.problems import install_handlers
from service.settings import Settings
from service.stores import Limits, SessionStore, store_from_url

__all__ = ["DOCS_STATIC_URL", "HOT_ENDPOINTS", "create_app", "limits_of", "store_of", "warm_engine"]

logger = logging.getLogger(__name__)

_DESCRIPTION = """\
Gradients of pooling layers as a service. A session caches the state of its last forward
pass, so backward needs only dA. Tensors travel as `.npy` or JSON (`Content-Type` picks the
decoder, `Accept` the encoder); errors are `application/problem+json` with a stable `code`.
"""


#: Where the documentation pages' static files are served.
DOCS_STATIC_URL = "/docs/static"

#: FastAPI's native OpenTelemetry, switched off (``FastAPI(telemetry=...)``).
_NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}

#: The routers of the API, in the order they are included (the order FastAPI tries them).
_ROUTERS = (routes.router, v2.router)

#: The endpoints that carry tensors, served by :class:`~service.hotroutes.HotRoutes` rather
#: than FastAPI's router (every route of each: v2's infer has one with a model version too).
HOT_ENDPOINTS = (routes.gradient, routes.forward, routes.backward, v2.infer)


def limits_of(settings: Settings) -> Limits:
    """The store limits the settings ask for."""
    return Limits(max_sessions=settings.max_sessions, max_state_bytes=settings.max_state_bytes)


def store_of(settings: Settings) -> SessionStore:
    """The store ``settings.store_url`` names, with the settings' limits, prefix and timeouts;
    ``ValueError`` naming the URL when it names no backend."""
    return store_from_url(
        settings.store_url,
        limits_of(settings),
        prefix=settings.store_prefix,
        connect_timeout_seconds=settings.store_connect_timeout_seconds,
        timeout_seconds=settings.store_timeout_seconds,
    )


def create_app(
    settings: Settings | None = None,
    store: SessionStore | None = None,
    *,
    hot_routes: bool = True,
) -> FastAPI:
    """A ready app; ``settings`` default to the environment, ``store`` to ``settings.store_url``.
    ``hot_routes=False`` leaves the :data:`HOT_ENDPOINTS` to FastAPI's router too (the tests
    compare the two ways; ``bench.inprocess --no-hot-routes`` times it).

    Raises ``ValueError`` naming the URL when ``store_url`` names no known backend.
    """
    settings = settings if settings is not None else Settings()
    store = store if store is not None else store_of(settings)
    body_budget = BodyBudget(settings.max_inflight_body_bytes)
    metrics = Metrics(store, body_budget)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        reaper = asyncio.create_task(_reap_forever(store, settings.reap_interval_seconds))
        try:
            yield
        finally:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
            await store.close()

    # /docs (Swagger UI 5, which renders OpenAPI 3.1) loads its script, style and favicon from
    # files that fastapi-offline ships, under DOCS_STATIC_URL: no CDN, so it renders on an
    # air-gapped machine. No /redoc: ReDoc's page fetches its logo from Redocly's CDN.
    app = FastAPIOffline(
        static_url=DOCS_STATIC_URL,
        redoc_url=None,
        title="poolgrad",
        version=__version__,
        description=_DESCRIPTION,
        lifespan=lifespan,
        # FastAPI's native OpenTelemetry hook asks the global providers (reading the
        # environment) on every request, 5% of a tiny one; the service's observability is
        # /metrics, the access log and request ids (docs/DECISIONS.md).
        telemetry=_NO_TELEMETRY,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.metrics = metrics
    app.state.body_budget = body_budget
    app.state.compute = Compute(store, settings, metrics)
    app.state.engine_kernels = warm_engine(settings)
    install_handlers(app, retry_after_seconds=settings.retry_after_seconds)
    documentation_routes = len(app.router.routes)
    for api_router in _ROUTERS:
        app.include_router(api_router)
    _api_routes_first(app, documentation_routes)
    # Added last, so outermost of the app's own middleware: FastAPI's stack (error and body
    # limit layers included) runs it for every request the hot routes leave to FastAPI.
    app.add_middleware(RequestMiddleware, metrics=metrics)
    if hot_routes:
        _serve_hot_routes_first(app, metrics)
    app.openapi = openapi.with_head(app.openapi)  # type: ignore[method-assign]
    return app


def _serve_hot_routes_first(app: FastAPI, metrics: Metrics) -> None:
    """Put :class:`~service.hotroutes.HotRoutes` in front of the stack FastAPI builds (when the
    first request comes): a request to one of the :data:`HOT_ENDPOINTS` is served under its own
    :class:`~service.middleware.RequestMiddleware`, which makes its every error a response and
    logs, counts and times it, so it skips FastAPI's outer layers (a last-resort error layer,
    telemetry and body limit hooks, here without work to do: about 3 us of a tiny request).
    Every other request goes to that stack unchanged."""
    api_routes = [route for api_router in _ROUTERS for route in api_router.routes]
    hot = [
        route
        for route in api_routes
        if isinstance(route, APIRoute) and route.endpoint in HOT_ENDPOINTS
    ]
    build_fastapi_stack = app.build_middleware_stack

    def build_middleware_stack() -> ASGIApp:
        return HotRoutes(
            build_fastapi_stack(),
            fastapi=app,
            routes=hot,
            earlier=api_routes,
            outer=functools.partial(RequestMiddleware, metrics=metrics),
        )

    app.build_middleware_stack = build_middleware_stack  # type: ignore[method-assign]


def _api_routes_first(app: FastAPI, documentation_routes: int) -> None:
    """Move the routes FastAPI adds for its documentation (``/openapi.json``, ``/docs`` and its
    static files) behind the API's own. The router tries routes in order, each match some 2 us
    per request, so every API request paid for four it never wanted; the documentation is
    fetched rarely, and none of these routes is in the OpenAPI description, so its order of
    paths stays as it was. ``documentation_routes``: how many routes the app had before the
    API's were included. Called before the first request, when FastAPI builds its route table
    from this list."""
    routes = app.router.routes
    routes[:] = routes[documentation_routes:] + routes[:documentation_routes]


def warm_engine(settings: Settings) -> str:
    """Resolve ``engine_kernels`` and compile the compiled kernels now (or load them from
    Numba's on-disk cache), logging the cost, so that no request pays for compilation.
    Returns the kernel set that runs: ``"numpy"`` or ``"compiled"``."""
    kernels = compiled.kernel_set(settings.engine_kernels)
    if kernels == "compiled":
        # The first start on a machine compiles them (about a minute on 2 cores): say so
        # before, or the server seems to hang; later starts load Numba's on-disk cache.
        logger.info(
            "engine: loading the compiled kernels (compiled on a first start, about a minute; "
            "then cached)"
        )
        started = time.perf_counter()
        compiled.warm_up()
        logger.info(
            "engine: compiled kernels ready in %.2f s (engine_kernels=%s, %d threads)",
            time.perf_counter() - started,
            settings.engine_kernels,
            settings.engine_threads,
        )
    else:
        logger.info(
            "engine: numpy kernels (engine_kernels=%s, %d threads)",
            settings.engine_kernels,
            settings.engine_threads,
        )
    return kernels


async def _reap_forever(store: SessionStore, interval_seconds: float) -> None:
    """Reclaim expired sessions every ``interval_seconds``; a failed round (a store outage, or
    any bug) is logged and skipped, never the end of reaping."""
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            reclaimed = await store.reap()
        except StoreUnavailable as exc:
            logger.warning("reaper: %s", exc.detail)
            continue
        except Exception:
            logger.exception("reaper: round failed; trying again in %g s", interval_seconds)
            continue
        if reclaimed:
            logger.info("reaper: reclaimed %d expired session(s)", reclaimed)
