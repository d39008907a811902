"""Stage ① dependencies: what a route may ask for (settings, engine, metrics, the caller's identity).

Handlers declare ``settings: SettingsDep``, ``engine: EngineDep``, ``owner: OwnerDep``; everything comes
from ``app.state`` set up by :func:`server.app.create_app`. The owner is a short hash of the caller's API
key (``anonymous`` when no keys are configured); jobs are visible to their owner only.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request, WebSocket
from starlette.requests import HTTPConnection

from server.engine.interfaces import EngineClient
from server.errors import AuthenticationError
from server.observability.metrics import Metrics
from server.settings import ServerSettings

ANONYMOUS = "anonymous"


def get_settings(request: HTTPConnection) -> ServerSettings:
    """The app's settings."""
    settings: ServerSettings = request.app.state.settings
    return settings


def get_engine(request: HTTPConnection) -> EngineClient:
    """The app's engine."""
    engine: EngineClient = request.app.state.engine
    return engine


def get_metrics(request: HTTPConnection) -> Metrics:
    """The app's metrics."""
    metrics: Metrics = request.app.state.metrics
    return metrics


def _owner_of(token: str | None, settings: ServerSettings) -> str:
    keys = settings.auth.api_keys
    if not keys:
        return ANONYMOUS
    if not token:
        raise AuthenticationError(
            "an API key is required: send `Authorization: Bearer <key>`", code="missing_api_key"
        )
    for key in keys:
        if hmac.compare_digest(token.encode(), key.get_secret_value().encode()):
            return "key_" + hashlib.sha256(token.encode()).hexdigest()[:16]
    raise AuthenticationError("the API key is not valid", code="invalid_api_key")


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def require_owner(request: Request) -> str:
    """Authenticate an HTTP request; returns the owner id.

    Raises:
        AuthenticationError: Keys are configured and the request's key is missing or wrong.
    """
    return _owner_of(_bearer(request.headers.get("authorization")), get_settings(request))


def require_ws_owner(websocket: WebSocket) -> str:
    """Authenticate a WebSocket: ``Authorization: Bearer`` or ``?api_key=`` (browsers cannot set headers).

    Raises:
        AuthenticationError: Keys are configured and the key is missing or wrong.
    """
    token = _bearer(websocket.headers.get("authorization")) or websocket.query_params.get("api_key")
    return _owner_of(token, get_settings(websocket))


def require_metrics_access(request: Request) -> None:
    """Guard ``/metrics`` when ``auth.protect_metrics`` is on."""
    settings = get_settings(request)
    if settings.auth.protect_metrics:
        require_owner(request)


SettingsDep = Annotated[ServerSettings, Depends(get_settings)]
EngineDep = Annotated[EngineClient, Depends(get_engine)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
OwnerDep = Annotated[str, Depends(require_owner)]
