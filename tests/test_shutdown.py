"""Graceful shutdown: on SIGTERM `rlserve serve` stops admitting (503), lets running
requests finish within `--shutdown-grace-s`, then aborts the rest with their partial
output, and exits 0 with a few log lines. (One real subprocess: starting one costs
seconds; the finish-within-grace half runs in-process.)"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from rlserve.server import ServerConfig
from tests.conftest_server import TEST_MODEL, RunningServer, free_port, wait_until

PROMPT_IDS = [11, 42, 7, 99, 5, 17]
MAX_LOG_LINES = 25


@contextmanager
def serve(grace_s: float) -> Iterator[tuple[subprocess.Popen, str]]:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "rlserve.cli",
        "serve",
        "--port",
        str(port),
        "--shutdown-grace-s",
        str(grace_s),
        "--max-tokens",
        "600",
        "--max-batch",
        "8",
    ]
    proc = subprocess.Popen(
        argv + (["--model", TEST_MODEL] if TEST_MODEL else []),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: _healthy(url) or proc.poll() is not None, 120)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _in_flight(url: str) -> int:
    metrics = httpx.get(url + "/metrics", timeout=5).json()
    return metrics["num_running"] + metrics["num_waiting"]


def _generate(url: str, max_tokens: int) -> dict[str, Any]:
    body = {"input_ids": PROMPT_IDS, "max_tokens": max_tokens, "ignore_eos": True}
    resp = httpx.post(url + "/generate", json=body, timeout=120)
    return {"status": resp.status_code, "body": resp.json()}


def _stream(url: str, max_tokens: int) -> dict[str, Any]:
    body = {"prompt": PROMPT_IDS, "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120) as resp:
        lines = [line for line in resp.iter_lines() if line]
    return {"status": resp.status_code, "lines": lines}


def _start(calls: list[Callable[[], dict[str, Any]]]) -> list[tuple[threading.Thread, dict]]:
    started = []
    for call in calls:
        box: dict[str, Any] = {}
        thread = threading.Thread(target=lambda c=call, b=box: b.update(c()), daemon=True)
        thread.start()
        started.append((thread, box))
    return started


def _finish_reason_of_stream(lines: list[str]) -> str | None:
    assert lines[-1] == "data: [DONE]", lines[-3:]
    chunks = [json.loads(line[len("data: ") :]) for line in lines[:-1]]
    assert all("error" not in chunk for chunk in chunks), chunks[-1]
    return chunks[-1]["choices"][0]["finish_reason"]


def _stop(proc: subprocess.Popen, url: str) -> tuple[int, list[str]]:
    """SIGTERM; a request sent right after gets a 503 error or finds the port closed (or,
    if it overtook the signal, is ended like the others). Returns the exit code and the
    stderr lines."""
    proc.send_signal(signal.SIGTERM)
    try:
        late = httpx.post(
            url + "/generate", json={"input_ids": PROMPT_IDS, "max_tokens": 2}, timeout=30
        )
        if late.status_code == 503:
            assert late.json()["error"]["type"] == "service_unavailable"
        else:
            assert late.status_code == 200 and late.json()["finish_reason"] == "abort"
    except httpx.TransportError:
        pass  # the listening socket is already closed
    code = proc.wait(60)
    assert proc.stderr is not None
    return code, proc.stderr.read().splitlines()


def test_sigterm_aborts_requests_left_after_the_grace_period() -> None:
    """A real `rlserve serve`: requests frozen by a pause cannot finish, so the grace
    period ends them with finish_reason "abort"; exit status 0, no tracebacks."""
    with serve(grace_s=0.5) as (proc, url):
        assert httpx.post(url + "/pause", json={"mode": "keep"}).status_code == 200
        calls = _start([lambda: _generate(url, 500)] * 3 + [lambda: _stream(url, 500)])
        assert wait_until(lambda: _in_flight(url) == 4, 30)  # frozen: they cannot finish
        code, stderr = _stop(proc, url)
    for thread, _ in calls:
        thread.join(30)
    results = [box for _, box in calls]
    assert code == 0, stderr
    assert all(r["status"] == 200 for r in results), results
    for r in results[:3]:
        assert r["body"]["finish_reason"] == "abort"
    assert _finish_reason_of_stream(results[3]["lines"]) == "abort"
    assert len(stderr) <= MAX_LOG_LINES and not any("Traceback" in s for s in stderr), stderr


@pytest.fixture
def closing_server(make_engine, checkpoints):
    srv = RunningServer(
        make_engine(checkpoints["qwen3"], num_blocks=64, block_size=8), ServerConfig(max_tokens=400)
    )
    yield srv
    srv.close()


def test_running_requests_finish_within_the_grace_period(closing_server) -> None:
    """What SIGTERM does, in-process: `close()` (the signal's part) and uvicorn's exit.
    Requests running then finish normally; new ones get a 503 in the error shape."""
    srv, url = closing_server, closing_server.url
    assert httpx.post(url + "/pause", json={"mode": "keep"}).status_code == 200
    calls = _start([lambda: _generate(url, 300)] * 2 + [lambda: _stream(url, 300)])
    assert wait_until(lambda: _in_flight(url) == 3, 30)
    srv.app.state.rlserve.loop.close(grace_s=120)
    health = httpx.get(url + "/health")
    assert health.status_code == 503 and health.json()["status"] == "shutting_down"
    for path, body in (
        ("/generate", {"input_ids": PROMPT_IDS}),
        ("/v1/completions", {"prompt": PROMPT_IDS}),
        ("/v1/completions", {"prompt": PROMPT_IDS, "stream": True}),
    ):
        resp = httpx.post(url + path, json=body)
        assert resp.status_code == 503, (path, resp.text)
        error = resp.json()["error"]
        assert error["type"] == "service_unavailable" and "shutting down" in error["message"]
    assert httpx.post(url + "/resume", json={}).status_code == 200  # admin still answers
    srv.server.should_exit = True  # uvicorn now waits for the responses in flight
    for thread, _ in calls:
        thread.join(60)
    results = [box for _, box in calls]
    assert all(r["status"] == 200 for r in results), results
    for r in results[:2]:
        assert r["body"]["finish_reason"] == "length"
        assert len(r["body"]["completion_ids"]) == 300
    assert _finish_reason_of_stream(results[2]["lines"]) == "length"


def test_shutdown_flags() -> None:
    from rlserve.server.cli import build_parser, config_from_args

    args = build_parser().parse_args(["--shutdown-grace-s", "2.5", "--allow-open-admin"])
    config = config_from_args(args)
    assert config.shutdown_grace_s == 2.5 and config.allow_open_admin
    assert ServerConfig().shutdown_grace_s == 10.0
    for bad in (-1, float("nan"), float("inf"), True, "5"):
        with pytest.raises(ValueError, match="shutdown_grace_s"):
            ServerConfig(shutdown_grace_s=bad)
