"""The router over remote replicas: `rlserve serve --backend-url A --backend-url B` (the
real CLI, as a subprocess) in front of two plain `rlserve serve` processes, and
health-based ejection of a remote replica that goes away."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from rlserve.cluster import ClusterConfig
from rlserve.cluster.replica_set import ReplicaSet
from rlserve.cluster.router_config import RouterConfig
from tests.cluster.test_router import RunningRouter, held_stream, sample
from tests.support.servers import RunningServer, free_port, wait_until

KEY = "router-key"


@pytest.fixture(scope="module")
def cli_router(rlserve_servers, tmp_path_factory) -> Iterator[str]:
    """`rlserve serve --backend-url ... --api-key KEY` on a free port; its URL."""
    port = free_port()
    argv = [sys.executable, "-m", "rlserve.cli", "serve", "--port", str(port)]
    for server in rlserve_servers:
        argv += ["--backend-url", server.url]
    argv += ["--api-key", KEY, "--health-interval", "0.5"]
    log_path: Path = tmp_path_factory.mktemp("cli-router") / "router.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        up = wait_until(lambda: _status(url + "/health") == 200 or proc.poll() is not None, 60)
        assert up and proc.poll() is None, log_path.read_text()[-3000:]
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def _status(url: str, **kwargs) -> int:
    try:
        return httpx.get(url, timeout=2, **kwargs).status_code
    except httpx.TransportError:
        return 0


def test_cli_router_spreads_over_two_plain_servers(cli_router, rlserve_servers):
    oai = openai.OpenAI(base_url=cli_router + "/v1", api_key=KEY, max_retries=0)
    model = oai.models.list().data[0].id
    auth = {"Authorization": f"Bearer {KEY}"}
    body = {"model": model, "prompt": "3+3=", "max_tokens": 8, "stream": True}
    remote_0 = rlserve_servers[0].url
    with held_stream(cli_router, remote_0, "/v1/completions", body, auth) as streamed:
        other = oai.completions.with_raw_response.create(model=model, prompt="1+2=", max_tokens=4)
        assert other.headers["x-rlserve-replica"] == "remote-1"
    assert streamed["replica"] == "remote-0" and b"[DONE]" in streamed["body"]

    health = httpx.get(cli_router + "/health", timeout=10).json()
    rows = {r["name"]: r for r in health["replicas"]}
    assert {r["url"] for r in rows.values()} == {s.url for s in rlserve_servers}
    assert all(r["kind"] == "remote" and r["dialect"] == "rlserve" for r in rows.values())
    text = httpx.get(cli_router + "/metrics", timeout=10).text
    assert sample(text, "rlserve_router_requests_total", "remote-0") >= 1
    assert sample(text, "rlserve_router_requests_total", "remote-1") >= 1


def test_cli_router_checks_the_keys_and_fans_out_admin_calls(cli_router, rlserve_servers):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=cli_router + "/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.post(cli_router + "/pause", json={}, timeout=10).status_code == 401
    auth = {"Authorization": f"Bearer {KEY}"}
    paused = httpx.post(cli_router + "/pause", json={"mode": "keep"}, headers=auth, timeout=30)
    assert paused.status_code == 200, paused.text
    try:
        for server in rlserve_servers:
            assert httpx.get(server.url + "/policy_version").json()["paused"] == "keep"
    finally:
        resumed = httpx.post(cli_router + "/resume", json={}, headers=auth, timeout=30)
    assert resumed.status_code == 200
    assert all(
        httpx.get(s.url + "/policy_version").json()["paused"] is None for s in rlserve_servers
    )


def test_cli_dispatches_to_the_router_and_refuses_bad_flags(capsys):
    from rlserve.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--backend-url", "nope://x"])
    assert exit_info.value.code == 2 and "backend_urls" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--replicas", "2", "--routing", "random"])
    assert "--routing" in capsys.readouterr().err


def test_remote_replica_that_goes_away_is_ejected_and_nothing_is_lost(make_engine):
    from rlserve.server import ServerConfig

    own = RunningServer(make_engine(None, num_blocks=64), ServerConfig(max_tokens=16))
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    replicas = ReplicaSet(ClusterConfig(backend_urls=(own.url, dead), health_interval_s=0.2))
    router = RunningRouter(replicas, RouterConfig(port=0))  # its health loop admits them
    try:
        assert wait_until(lambda: replicas.replica("remote-0").routable, 30)
        health = httpx.get(router.url + "/health", timeout=10).json()
        rows = {r["name"]: r for r in health["replicas"]}
        assert rows["remote-1"]["healthy"] is False and rows["remote-1"]["last_error"]
        oai = openai.OpenAI(base_url=router.url + "/v1", api_key="none", max_retries=0)
        model = oai.models.list().data[0].id
        for _ in range(3):  # the unreachable one never gets a request
            raw = oai.completions.with_raw_response.create(model=model, prompt="1", max_tokens=2)
            assert raw.headers["x-rlserve-replica"] == "remote-0"

        own.close()
        assert wait_until(lambda: not replicas.replica("remote-0").routable, 30)
        assert router.counted("ejections", "remote-0") >= 1
        assert httpx.get(router.url + "/health", timeout=10).status_code == 503
        with pytest.raises(openai.APIStatusError) as err:  # a clear 503, not a hang
            oai.completions.create(model=model, prompt="1", max_tokens=2)
        assert err.value.status_code == 503 and "no healthy replica" in str(err.value)
        assert httpx.post(router.url + "/pause", json={}).status_code == 503
    finally:
        router.close()
        own.close()
