"""The hot routes (the endpoints that carry tensors) served straight, without FastAPI's general
router and dependency solver, exactly as FastAPI would serve them.

FastAPI spends more on a tiny request than the request's whole compute: matching it against the
route table in order (through each included router), then solving its dependencies with the
general solver that also handles query, header, cookie and body parameters, scopes and
``yield`` dependencies (about 75 of 176 us per tiny ``/v1/gradient`` call in
``python -m bench.inprocess``; docs/DECISIONS.md). :class:`HotRoutes` sits in front of the
stack FastAPI builds. A request whose method and path a hot route matches is served here, under
the layers the app gives every request of its own (``outer``: the request middleware, which
turns every error into a response); every other request goes on to FastAPI's stack untouched.
For a hot route it does what FastAPI does for it, and only what FastAPI does:

- matching: the route's own ``matches`` (its regex, converters and ``root_path`` handling), so
  ``scope["route"]`` and ``scope["path_params"]`` are FastAPI's; a hot route must not be
  shadowed by a route FastAPI would try first, which :class:`HotRoutes` checks when built
  (``HEAD`` matches no hot route: FastAPI's stack answers it, the request middleware there
  serving it as the ``GET`` it stands for);
- parameters (unless ``app.dependency_overrides`` holds any, when FastAPI serves every
  request): the route's dependency tree may hold only path parameters typed ``str``, the
  ``Request``, and ``async`` dependencies of the same kinds, each solved once per request as
  FastAPI caches them; anything else (query, header, cookie or body parameters, ``yield`` or
  sync dependencies, security scopes) is refused when the app is built, so no route can be made
  hot and silently lose a validation;
- errors: whatever the endpoint or a dependency raises goes to the app's exception handlers,
  looked up along the exception's class hierarchy as Starlette looks them up; an exception no
  handler takes propagates to ``outer`` (the request middleware: a 500), as it does from
  FastAPI's stack, where the request middleware catches it before FastAPI's own last-resort
  layer could;
- the answer: the :class:`~starlette.responses.Response` the endpoint returns (an endpoint that
  returns anything else is a programming error, refused with ``TypeError``).

``tests/service/test_hotroutes.py`` sends the same requests, good and bad, to an app with and
without this layer and requires the same answers.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["HotRoutes", "UnsupportedHotRoute"]

#: Placeholder for each path parameter in the sample path of a hot route: the shadowing check
#: asks whether a route FastAPI tries first would match a request to that path.
_SAMPLE_PARAMETER = "sample"


class UnsupportedHotRoute(TypeError):
    """A route named hot needs something of FastAPI that :class:`HotRoutes` does not do."""


@dataclass(frozen=True, slots=True)
class _Call:
    """How to call one dependant: its callable and where each keyword argument comes from."""

    call: Callable[..., Any]
    #: The keyword that receives the Request, if any.
    request: str | None
    #: (keyword, path parameter) pairs.
    path: tuple[tuple[str, str], ...]
    #: (keyword or None for a route-level dependency, how to call it, cached per request).
    dependencies: tuple[tuple[str | None, _Call, bool], ...]

    async def __call__(
        self, request: Request, path_params: dict[str, Any], solved: dict[Any, Any]
    ) -> Any:
        kwargs: dict[str, Any] = {}
        # Sub-dependencies first, in declaration order, as FastAPI solves them.
        for name, dependency, cached in self.dependencies:
            if cached and dependency.call in solved:
                value = solved[dependency.call]
            else:
                value = await dependency(request, path_params, solved)
                if cached:
                    solved[dependency.call] = value
            if name is not None:
                kwargs[name] = value
        if self.request is not None:
            kwargs[self.request] = request
        for name, key in self.path:
            kwargs[name] = path_params[key]
        return await self.call(**kwargs)


def _is_async(call: Callable[..., Any]) -> bool:
    if inspect.isasyncgenfunction(call) or inspect.isgeneratorfunction(call):
        return False
    method = call if inspect.isroutine(call) else getattr(call, "__call__", None)  # noqa: B004
    return method is not None and inspect.iscoroutinefunction(method)


def _plan(dependant: Dependant, route: APIRoute) -> _Call:
    """The call plan of ``dependant``, or :class:`UnsupportedHotRoute` naming what it needs."""
    where = f"hot route {sorted(route.methods or ())} {route.path}"
    unsupported = {
        "query parameters": dependant.query_params,
        "header parameters": dependant.header_params,
        "cookie parameters": dependant.cookie_params,
        "body parameters": dependant.body_params,
        "a websocket": dependant.websocket_param_name,
        "an HTTP connection": dependant.http_connection_param_name,
        "a Response parameter": dependant.response_param_name,
        "background tasks": dependant.background_tasks_param_name,
        "security scopes": dependant.security_scopes_param_name or dependant.own_oauth_scopes,
    }
    needs = [what for what, present in unsupported.items() if present]
    if needs:
        raise UnsupportedHotRoute(f"{where}: {dependant.call!r} takes {', '.join(needs)}")
    if dependant.call is None or not _is_async(dependant.call):
        raise UnsupportedHotRoute(f"{where}: {dependant.call!r} is not an async function")
    path = []
    for field in dependant.path_params:
        if field.field_info.annotation is not str:
            raise UnsupportedHotRoute(
                f"{where}: path parameter {field.name!r} is not typed str (FastAPI would "
                "convert and validate it)"
            )
        path.append((field.name, field.alias))
    return _Call(
        call=dependant.call,
        request=dependant.request_param_name,
        path=tuple(path),
        dependencies=tuple(
            (sub.name, _plan(sub, route), sub.use_cache) for sub in dependant.dependencies
        ),
    )


def _sample_scope(route: APIRoute, method: str) -> Scope:
    path = route.path_format
    for name in route.param_convertors:
        path = path.replace(f"{{{name}}}", _SAMPLE_PARAMETER)
    return {"type": "http", "method": method, "path": path, "root_path": "", "path_params": {}}


def _check_not_shadowed(route: APIRoute, earlier: Iterable[BaseRoute]) -> None:
    """:class:`UnsupportedHotRoute` when a route FastAPI tries before ``route`` fully matches a
    request to ``route``'s path (parameters set to a sample value) with one of its methods."""
    for method in route.methods or ():
        scope = _sample_scope(route, method)
        for other in earlier:
            if other.matches(scope)[0] is Match.FULL:
                raise UnsupportedHotRoute(
                    f"hot route {method} {route.path} is shadowed by {other!r}, which FastAPI "
                    "tries first"
                )


class HotRoutes:
    """ASGI middleware serving ``routes`` of ``app`` itself (see the module docstring).

    Parameters
    ----------
    app
        What serves every other request (the stack FastAPI builds).
    fastapi
        The app whose exception handlers render errors.
    routes
        The hot routes, in the order FastAPI would try them.
    earlier
        Every route of the app in the order FastAPI tries them, to check that none shadows a
        hot route.
    outer
        Wraps the ASGI app that serves one hot route in the layers every request gets (the
        app's request middleware); None for none.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        fastapi: FastAPI,
        routes: Iterable[APIRoute],
        earlier: Iterable[BaseRoute],
        outer: Callable[[ASGIApp], ASGIApp] | None = None,
    ) -> None:
        self.app = app
        self.fastapi = fastapi
        ordered = list(earlier)
        self.routes: list[tuple[APIRoute, frozenset[str], ASGIApp]] = []
        for route in routes:
            # By identity: Starlette's routes compare equal by path, endpoint and methods.
            position = next(i for i, other in enumerate(ordered) if other is route)
            _check_not_shadowed(route, ordered[:position])
            methods = frozenset(route.methods or ())
            served: ASGIApp = functools.partial(self._serve, call=_plan(route.dependant, route))
            self.routes.append((route, methods, served if outer is None else outer(served)))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Dependency overrides (tests of an embedding app set them) are FastAPI's to apply:
        # while any is set, every request goes the general way.
        if scope["type"] == "http" and not self.fastapi.dependency_overrides:
            # Without a root path the route's regex sees the path as it is: a cheap test that
            # leaves the full match (FastAPI's, 1.5 us) to the route that will serve.
            path = None if scope.get("root_path") else scope["path"]
            for route, methods, served in self.routes:
                if scope["method"] not in methods:
                    continue
                if path is not None and route.path_regex.match(path) is None:
                    continue
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child_scope)
                    await served(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, *, call: _Call) -> None:
        request = Request(scope, receive)
        try:
            response = await call(request, scope["path_params"], {})
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            response = handler(request, exc)
            if inspect.isawaitable(response):
                response = await response
        if not isinstance(response, Response):
            raise TypeError(f"hot endpoint {call.call!r} returned {type(response).__name__}")
        await response(scope, receive, send)

    def _handler(self, exc: Exception) -> Callable[..., Any] | None:
        handlers = self.fastapi.exception_handlers
        for cls in type(exc).__mro__:
            if cls in handlers:
                return handlers[cls]
        return None
