"""HTTP probes of one replica: health, the dialect it speaks, its policy version."""

from __future__ import annotations

from typing import Any

import httpx

PROBE_TIMEOUT_S = 5.0


def admin_headers(admin_key: str | None, api_key: str | None) -> dict[str, str]:
    """The bearer header the cluster's own admin calls to a replica carry."""
    key = admin_key or api_key
    return {"Authorization": f"Bearer {key}"} if key else {}


async def is_healthy(client: httpx.AsyncClient, url: str) -> tuple[bool, str | None]:
    """(healthy, why not): `GET /health` answers 200 (rlserve, vLLM and SGLang all have it)."""
    try:
        reply = await client.get(url + "/health", timeout=PROBE_TIMEOUT_S)
    except httpx.HTTPError as exc:
        return False, f"{type(exc).__name__}: {exc}"
    if reply.status_code != 200:
        return False, f"GET /health answered {reply.status_code}"
    return True, None


async def probe_dialect(client: httpx.AsyncClient, url: str) -> str:
    """ "rlserve" when `/health` reports a `policy_version` (rlserve's body), "sglang" when
    `/get_model_info` exists (SGLang's native route), else "vllm"."""
    try:
        health = await client.get(url + "/health", timeout=PROBE_TIMEOUT_S)
        if health.status_code == 200 and "policy_version" in _json(health):
            return "rlserve"
        info = await client.get(url + "/get_model_info", timeout=PROBE_TIMEOUT_S)
        if info.status_code == 200:
            return "sglang"
    except httpx.HTTPError:
        return "rlserve"  # unreachable now: the health loop keeps it out until it answers
    return "vllm"


async def rlserve_version(client: httpx.AsyncClient, url: str) -> int | None:
    """An rlserve replica's policy version from `/health` (None if it does not say)."""
    reply = await client.get(url + "/health", timeout=PROBE_TIMEOUT_S)
    version = _json(reply).get("policy_version")
    return version if isinstance(version, int) else None


def _json(reply: httpx.Response) -> dict[str, Any]:
    try:
        data = reply.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
