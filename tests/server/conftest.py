"""Fixtures of the HTTP server tests: the main shared server, an `openai` SDK client on it,
and the check that every test leaves the servers it used settled."""

from __future__ import annotations

import openai
import pytest

from tests.support.servers import RunningServer, main_server, wait_until


@pytest.fixture(scope="module")
def server(make_engine, pytestconfig) -> RunningServer:
    """The session's main server (bundled model, default batching knobs); a module that
    needs another server defines its own `server`."""
    return main_server(make_engine, pytestconfig)


@pytest.fixture(scope="module")
def oai(server: RunningServer) -> openai.OpenAI:
    """The official `openai` client on `server`, without retries."""
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def model(oai: openai.OpenAI) -> str:
    """The id `server` serves its model under."""
    return oai.models.list().data[0].id


@pytest.fixture(autouse=True)
def settled(request: pytest.FixtureRequest):
    """After each test, every `RunningServer` it used has no request left in the engine or
    its queue and every KV block free."""
    yield
    for value in request.node.funcargs.values():
        if isinstance(value, RunningServer):
            assert wait_until(value.idle, 10), "requests or KV blocks left behind"
