"""Graceful shutdown: on SIGTERM `rlserve serve` stops admitting but keeps serving (503 in
the error shape, /health "shutting_down") until nothing is in flight or `--shutdown-grace-s`
passed, aborting what is left then with its partial output, and exits 0 with a few log
lines; a second signal exits at once. (One real subprocess: starting one costs seconds; the
rest runs `DrainingServer` in-process, calling its signal handler directly.)"""

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
import uvicorn

from rlserve.server import ServerConfig, create_app
from rlserve.server.cli import DrainingServer
from tests.support.servers import TEST_MODEL, free_port, wait_until

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
    metrics = httpx.get(url + "/metrics?format=json", timeout=5).json()
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


def _late_request_is_refused(url: str) -> None:
    """A request sent while the server drains gets a 503 in the error shape."""
    resp = httpx.post(url + "/generate", json={"input_ids": PROMPT_IDS, "max_tokens": 2})
    assert resp.status_code == 503, resp.text
    error = resp.json()["error"]
    assert error["type"] == "service_unavailable" and "shutting down" in error["message"]


def _shutting_down(url: str) -> bool:
    health = httpx.get(url + "/health", timeout=5)
    return health.status_code == 503 and health.json()["status"] == "shutting_down"


def test_sigterm_keeps_serving_503s_until_nothing_is_in_flight() -> None:
    """A real `rlserve serve`: after SIGTERM the port stays open, so a late request gets a
    503 (not a refused connection) while requests frozen by a pause are still in flight;
    once they end (an admin abort: finish_reason "abort") the server exits 0, long before
    its grace period, with few log lines and no traceback."""
    with serve(grace_s=120) as (proc, url):
        assert httpx.post(url + "/pause", json={"mode": "keep"}).status_code == 200
        calls = _start([lambda: _generate(url, 500)] * 3 + [lambda: _stream(url, 500)])
        assert wait_until(lambda: _in_flight(url) == 4, 30)  # frozen: they cannot finish
        proc.send_signal(signal.SIGTERM)
        assert wait_until(lambda: _shutting_down(url), 30)
        _late_request_is_refused(url)
        assert proc.poll() is None  # still draining: the frozen requests are in flight
        assert httpx.post(url + "/abort", json={}).json()["aborted"] == 4
        code = proc.wait(60)
        assert proc.stderr is not None
        stderr = proc.stderr.read().splitlines()
    for thread, _ in calls:
        thread.join(30)
    results = [box for _, box in calls]
    assert code == 0, stderr
    assert all(r["status"] == 200 for r in results), results
    for r in results[:3]:
        assert r["body"]["finish_reason"] == "abort"
    assert _finish_reason_of_stream(results[3]["lines"]) == "abort"
    assert len(stderr) <= MAX_LOG_LINES and not any("Traceback" in s for s in stderr), stderr


class DrainingTestServer:
    """`DrainingServer` (what `rlserve serve` runs) on a free port, in a background thread;
    `signal()` calls its handler as SIGTERM would."""

    def __init__(self, engine: Any, grace_s: float) -> None:
        self.app = create_app(engine, ServerConfig(max_tokens=400, shutdown_grace_s=grace_s))
        self.loop = self.app.state.rlserve.loop
        uv_config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning")
        self.server = DrainingServer(uv_config, self.loop, grace_s)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        assert wait_until(lambda: self.server.started, 60)
        self.url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"

    def signal(self) -> None:
        self.server.handle_exit(signal.SIGTERM, None)

    def exited(self) -> bool:
        return not self.thread.is_alive()

    def close(self) -> None:
        self.server.should_exit = self.server.force_exit = True
        self.thread.join(30)
        self.loop.stop()


@pytest.fixture
def draining(make_engine, checkpoints):
    servers: list[DrainingTestServer] = []

    def start(grace_s: float) -> DrainingTestServer:
        engine = make_engine(checkpoints["qwen3"], num_blocks=64, block_size=8)
        servers.append(DrainingTestServer(engine, grace_s))
        return servers[-1]

    yield start
    for srv in servers:
        srv.close()


def test_running_requests_finish_within_the_grace_period(draining) -> None:
    """Requests running at the signal finish normally; meanwhile new ones get a 503 in
    the error shape and admin routes still answer; then the server exits by itself."""
    srv = draining(grace_s=120)
    url = srv.url
    assert httpx.post(url + "/pause", json={"mode": "keep"}).status_code == 200
    calls = _start([lambda: _generate(url, 300)] * 2 + [lambda: _stream(url, 300)])
    assert wait_until(lambda: _in_flight(url) == 3, 30)
    srv.signal()
    assert _shutting_down(url)
    for path, body in (
        ("/generate", {"input_ids": PROMPT_IDS}),
        ("/v1/completions", {"prompt": PROMPT_IDS}),
        ("/v1/completions", {"prompt": PROMPT_IDS, "stream": True}),
    ):
        resp = httpx.post(url + path, json=body)
        assert resp.status_code == 503, (path, resp.text)
        error = resp.json()["error"]
        assert error["type"] == "service_unavailable" and "shutting down" in error["message"]
    assert not srv.exited()
    assert httpx.post(url + "/resume", json={}).status_code == 200  # admin still answers
    for thread, _ in calls:
        thread.join(60)
    results = [box for _, box in calls]
    assert all(r["status"] == 200 for r in results), results
    for r in results[:2]:
        assert r["body"]["finish_reason"] == "length"
        assert len(r["body"]["completion_ids"]) == 300
    assert _finish_reason_of_stream(results[2]["lines"]) == "length"
    srv.thread.join(30)
    assert srv.exited()


def test_requests_left_after_the_grace_period_are_aborted(draining) -> None:
    """Frozen requests cannot finish: at the end of the grace period they end with
    finish_reason "abort" and their partial output, and the server exits."""
    srv = draining(grace_s=0.2)
    url = srv.url
    assert httpx.post(url + "/pause", json={"mode": "keep"}).status_code == 200
    calls = _start([lambda: _generate(url, 300), lambda: _stream(url, 300)])
    assert wait_until(lambda: _in_flight(url) == 2, 30)
    srv.signal()
    for thread, _ in calls:
        thread.join(60)
    generated, streamed = (box for _, box in calls)
    assert generated["status"] == streamed["status"] == 200
    assert generated["body"]["finish_reason"] == "abort"
    assert _finish_reason_of_stream(streamed["lines"]) == "abort"
    srv.thread.join(30)
    assert srv.exited()


def test_a_second_signal_exits_at_once(draining) -> None:
    """Fault injection (a sequence counted as queued, so the drain cannot end by itself):
    the first signal drains, the second forces uvicorn's exit without waiting."""
    srv = draining(grace_s=120)
    srv.loop._admission.queued = 1
    try:
        srv.signal()
        assert _shutting_down(srv.url) and not srv.exited()
        srv.signal()
        srv.thread.join(30)
        assert srv.exited() and srv.server.force_exit
    finally:
        srv.loop._admission.queued = 0


def test_shutdown_flags() -> None:
    from rlserve.server.cli import build_parser, config_from_args

    args = build_parser().parse_args(["--shutdown-grace-s", "2.5", "--allow-open-admin"])
    config = config_from_args(args)
    assert config.shutdown_grace_s == 2.5 and config.allow_open_admin
    assert ServerConfig().shutdown_grace_s == 10.0
    for bad in (-1, float("nan"), float("inf"), True, "5"):
        with pytest.raises(ValueError, match="shutdown_grace_s"):
            ServerConfig(shutdown_grace_s=bad)
