"""STAND-IN for the parts of FastAPI/Starlette that vLLM's server is built from (standard library only).

`APIRouter` registers handlers with the decorators vLLM's source uses (`@router.get("/health")`,
`@router.post("/invocations")`, `router.mount("/metrics", app)`), and `FastAPI()` adds FastAPI's
default `/openapi.json`, `/docs` and `/redoc` unless they are set to None, as FastAPI does. So the
stand-in's SOURCE registers routes the way real vLLM's does, and `gptoss-doctor` reads both alike.

A request travels as an ASGI-like `scope` dict through middlewares `(scope) -> Response` to the app.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Response:
    status: int
    body: object = ""  # a dict/list is sent as JSON, a str as text
    content_type: str | None = None

    def encoded(self) -> tuple[bytes, str]:
        if isinstance(self.body, (dict, list)):
            return json.dumps(self.body).encode(), self.content_type or "application/json"
        return str(self.body).encode(), self.content_type or "text/plain; charset=utf-8"


@dataclass
class Request:
    scope: dict
    app: "FastAPI"

    @property
    def headers(self) -> dict[str, str]:
        return self.scope["headers"]

    @property
    def state(self):
        return self.app.state

    def json(self):
        raw = self.scope.get("body") or b"{}"
        return json.loads(raw)


@dataclass
class Route:
    path: str
    methods: tuple[str, ...]
    endpoint: Callable[[Request], object]
    prefix_match: bool = False  # a mount answers every path below it


@dataclass
class APIRouter:
    routes: list[Route] = field(default_factory=list)

    def api_route(self, path: str, methods: list[str]):
        def register(fn):
            self.routes.append(Route(path, tuple(m.upper() for m in methods), fn))
            return fn
        return register

    def get(self, path: str, **_kw):
        return self.api_route(path, ["GET"])

    def post(self, path: str, **_kw):
        return self.api_route(path, ["POST"])

    def mount(self, path: str, endpoint: Callable[[Request], object]) -> None:
        self.routes.append(Route(path, ("GET",), endpoint, prefix_match=True))


class State:
    pass


class FastAPI(APIRouter):
    def __init__(self, openapi_url: str | None = "/openapi.json", docs_url: str | None = "/docs",
                 redoc_url: str | None = "/redoc") -> None:
        super().__init__()
        self.state = State()
        self.middleware_stack: list = []
        if openapi_url:
            self.routes.append(Route(openapi_url, ("GET",), lambda _req: self.openapi()))
        for url, title in ((docs_url, "Swagger UI"), (redoc_url, "ReDoc")):
            if url:
                self.routes.append(Route(url, ("GET",), lambda _req, t=title: Response(
                    200, f"<!DOCTYPE html><html><head><title>vLLM - {t}</title></head></html>", "text/html")))

    def include_router(self, router: APIRouter) -> None:
        self.routes.extend(router.routes)

    def add_middleware(self, cls, **kwargs) -> None:
        self.middleware_stack.append((cls, kwargs))

    def openapi(self) -> dict:
        paths: dict[str, dict] = {}
        for r in self.routes:
            if not r.prefix_match:
                for m in r.methods:
                    paths.setdefault(r.path, {})[m.lower()] = {"summary": r.endpoint.__name__}
        return {"openapi": "3.1.0", "info": {"title": "FastAPI", "version": "0.1.0"}, "paths": paths}

    def route_for(self, path: str, method: str) -> tuple[Route | None, bool]:
        """(the route, whether the path exists at all)."""
        found = [r for r in self.routes if r.path == path or (r.prefix_match and path.startswith(r.path))]
        for r in found:
            if method in r.methods:
                return r, True
        return None, bool(found)

    def __call__(self, scope: dict) -> Response:
        route, exists = self.route_for(scope["path"], scope["method"])
        if route is None:
            return Response(405, {"detail": "Method Not Allowed"}) if exists else Response(404, {"detail": "Not Found"})
        out = route.endpoint(Request(scope, self))
        return out if isinstance(out, Response) else Response(200, out)

    def asgi(self) -> Callable[[dict], Response]:
        """The app wrapped in its middlewares, the last added outermost (as Starlette does)."""
        app: Callable[[dict], Response] = self
        for cls, kwargs in self.middleware_stack:
            app = cls(app, **kwargs)
        return app
