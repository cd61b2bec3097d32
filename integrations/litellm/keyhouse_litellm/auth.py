"""The hook: every request's key goes to keyhouse's VerifyKey (over its REST shim,
``POST /api/v1/auth/validate-key``) with the ``llm:inference`` scope and the caller's address.

Configuration, read from the environment when the first request arrives:

- ``KEYHOUSE_URL``: keyhouse's base URL, e.g. ``http://keyhouse:8084``. Required.
- ``KEYHOUSE_SERVICE_TOKEN``: sent as ``Authorization: Bearer``. Optional: VerifyKey needs no
  credential today, but a keyhouse that asks for one gets it.
- ``KEYHOUSE_TIMEOUT_SECS``: how long one check may take (default 2).
- ``KEYHOUSE_TRUSTED_PROXIES``: comma-separated addresses or networks of proxies in front of
  LiteLLM. Only when the connection comes from one of them is ``X-Forwarded-For`` read.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime

import httpx
from fastapi import Request
from litellm.proxy._types import ProxyErrorTypes, ProxyException, UserAPIKeyAuth

logger = logging.getLogger("keyhouse_litellm")

# The scopes a key needs to call the proxy.
REQUIRED_SCOPES: tuple[str, ...] = ("llm:inference",)

# Each VerifyKey reason's HTTP status. A reason missing here (one added to keyhouse later) is a
# 401: an unknown answer never lets a request through.
REASON_STATUS: dict[str, int] = {
    "MALFORMED": 401,
    "NOT_FOUND": 401,
    "EXPIRED": 401,
    "REVOKED": 401,
    "INSUFFICIENT_SCOPE": 403,
    "IP_NOT_ALLOWED": 403,
    "RATE_LIMITED": 429,
}
UNKNOWN_REASON_STATUS = 401
# keyhouse unreachable, or an answer that is not a verdict: the request is refused, with a status
# that tells the client to come back rather than that its key is bad.
UNAVAILABLE_STATUS = 503

VALIDATE_PATH = "/api/v1/auth/validate-key"
# Under keyhouse's idle timeout for HTTP/1 connections (KEYHOUSE_HEADER_READ_TIMEOUT_SECS, 10 s),
# so a kept-alive connection is dropped here before keyhouse closes it.
KEEPALIVE_EXPIRY_SECS = 5.0


@dataclass(frozen=True)
class Settings:
    url: str
    token: str | None
    timeout: float
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def from_env(cls) -> Settings:
        url = os.environ.get("KEYHOUSE_URL", "").strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ValueError("KEYHOUSE_URL must be set to keyhouse's http:// or https:// base URL")
        raw_timeout = os.environ.get("KEYHOUSE_TIMEOUT_SECS", "2")
        try:
            timeout = float(raw_timeout)
        except ValueError:
            raise ValueError("KEYHOUSE_TIMEOUT_SECS must be a number of seconds") from None
        if not 0 < timeout <= 60:
            raise ValueError("KEYHOUSE_TIMEOUT_SECS must be over 0 and at most 60")
        trusted = []
        for item in os.environ.get("KEYHOUSE_TRUSTED_PROXIES", "").split(","):
            if item.strip():
                try:
                    trusted.append(ipaddress.ip_network(item.strip(), strict=False))
                except ValueError:
                    raise ValueError(
                        f"KEYHOUSE_TRUSTED_PROXIES: {item.strip()!r} is no address or network"
                    ) from None
        token = os.environ.get("KEYHOUSE_SERVICE_TOKEN", "").strip() or None
        return cls(url=url, token=token, timeout=timeout, trusted=tuple(trusted))


# One client per event loop (LiteLLM runs one loop per worker process), made on first use and
# kept: its pool holds the connections to keyhouse open across requests.
_client: tuple[asyncio.AbstractEventLoop, httpx.AsyncClient, Settings] | None = None


def _connection() -> tuple[httpx.AsyncClient, Settings]:
    global _client
    loop = asyncio.get_running_loop()
    if _client is None or _client[0] is not loop:
        settings = Settings.from_env()
        headers = {"Accept": "application/json"}
        if settings.token is not None:
            headers["Authorization"] = f"Bearer {settings.token}"
        client = httpx.AsyncClient(
            base_url=settings.url,
            headers=headers,
            timeout=settings.timeout,
            limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_SECS),
            follow_redirects=False,
            trust_env=False,
        )
        _client = (loop, client, settings)
    return _client[1], _client[2]


def _deny(status: int, message: str, headers: dict[str, str] | None = None) -> ProxyException:
    return ProxyException(
        message=message,
        type=ProxyErrorTypes.auth_error,
        param="api_key",
        code=status,
        headers=headers,
    )


def _address(value: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not value:
        return None
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        return None


def client_ip(request: Request, settings: Settings) -> str | None:
    """The caller's address: the connection's peer; behind trusted proxies, the nearest
    ``X-Forwarded-For`` hop that is not one of them (read from the right, so a client cannot
    choose it by sending its own header)."""
    peer = _address(request.client.host if request.client else None)
    if peer is None:
        return None

    def trusted(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(ip in net for net in settings.trusted)

    if not trusted(peer):
        return str(peer)
    hops = ",".join(request.headers.getlist("x-forwarded-for")).split(",")
    for hop in reversed(hops):
        ip = _address(hop)
        if ip is None:
            # A hop that is no address: nothing to the left of it can be trusted either.
            return str(peer)
        if not trusted(ip):
            return str(ip)
    return str(peer)


def _retry_after(reset_at: str | None) -> dict[str, str]:
    if not reset_at:
        return {}
    try:
        at = datetime.fromisoformat(reset_at.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return {}
    return {"Retry-After": str(max(1, math.ceil(at - time.time())))}


async def _verify(client: httpx.AsyncClient, body: dict[str, object]) -> httpx.Response:
    try:
        return await client.post(VALIDATE_PATH, json=body)
    except (httpx.RemoteProtocolError, httpx.ConnectError):
        # A kept-alive connection closed by keyhouse (idle timeout, connection age) just as the
        # request went out: VerifyKey changes nothing, so it is sent once more.
        return await client.post(VALIDATE_PATH, json=body)


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    """LiteLLM's ``custom_auth``: the key's owner and id, or a ProxyException with 401, 403, 429
    or 503."""
    key = (api_key or "").strip()
    if key[:7].lower() == "bearer ":
        key = key[7:].strip()
    if not key:
        raise _deny(401, "keyhouse: no API key was presented")
    try:
        client, settings = _connection()
    except ValueError as e:
        logger.error("keyhouse_litellm is not configured: %s", e)
        raise _deny(UNAVAILABLE_STATUS, "keyhouse: the key check is not configured") from None
    body: dict[str, object] = {"api_key": key, "required_scopes": list(REQUIRED_SCOPES)}
    ip = client_ip(request, settings)
    if ip is not None:
        body["client_ip"] = ip
    try:
        answer = await _verify(client, body)
    except httpx.HTTPError as e:
        logger.warning("keyhouse unreachable at %s: %s", settings.url, type(e).__name__)
        raise _deny(UNAVAILABLE_STATUS, "keyhouse: the key check is unavailable") from None
    if answer.status_code != 200:
        logger.warning("keyhouse answered the key check with HTTP %d", answer.status_code)
        raise _deny(UNAVAILABLE_STATUS, "keyhouse: the key check is unavailable")
    try:
        verdict = answer.json()
        valid = verdict["valid"] is True
    except (ValueError, KeyError, TypeError):
        logger.warning("keyhouse's key check answered no verdict")
        raise _deny(UNAVAILABLE_STATUS, "keyhouse: the key check is unavailable") from None
    if not valid:
        reason = str(verdict.get("reason") or "REASON_UNSPECIFIED")
        status = REASON_STATUS.get(reason, UNKNOWN_REASON_STATUS)
        headers = _retry_after((verdict.get("rate_limit") or {}).get("reset_at")) if status == 429 else None
        raise _deny(status, f"keyhouse: key refused ({reason})", headers)
    owner = verdict.get("user") or {}
    key_id, user_id = owner.get("key_id"), owner.get("user_id")
    if not key_id or not user_id:
        logger.warning("keyhouse's key check named no key or owner")
        raise _deny(UNAVAILABLE_STATUS, "keyhouse: the key check is unavailable")
    # `api_key` becomes LiteLLM's logged key hash (`user_api_key_hash`): the key's id, never the
    # key itself. `key_alias` and `user_id` go to its logs and callbacks as they are.
    return UserAPIKeyAuth(
        api_key=f"keyhouse-{key_id}",
        key_alias=key_id,
        user_id=user_id,
        metadata={"keyhouse_key_id": key_id, "keyhouse_permissions": owner.get("permissions") or []},
    )
