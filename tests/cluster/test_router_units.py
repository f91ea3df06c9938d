"""Router pieces that need no replica: Prometheus relabelling, SSE event cutting, the
broken-stream event as the `openai` SDK reads it, the router's config and CLI flags."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from rlserve.cluster.cli import build_parser, configs_from_args, wants_cluster
from rlserve.cluster.router_config import RouterConfig
from rlserve.cluster.router_metrics import relabel
from rlserve.cluster.router_proxy import SseEvents, broken_stream_events, forwarded

REPLICA_TEXT = """# HELP rlserve_generation_tokens_total Tokens generated
# TYPE rlserve_generation_tokens_total counter
rlserve_generation_tokens_total 12.0
# HELP vllm:num_requests_running Running
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 1.0
# HELP lat Latency
# TYPE lat histogram
lat_bucket{le="0.1"} 3.0
lat_bucket{le="+Inf",} 4.0
lat_sum 0.5
"""


def test_relabel_adds_the_replica_and_keeps_families_together():
    families: dict = {}
    relabel(REPLICA_TEXT, "ray-0", families)
    relabel(REPLICA_TEXT.replace("12.0", "30.0"), "ray-1", families)
    tokens = families["rlserve_generation_tokens_total"]
    assert tokens.samples == [
        'rlserve_generation_tokens_total{replica="ray-0"} 12.0',
        'rlserve_generation_tokens_total{replica="ray-1"} 30.0',
    ]
    assert len(tokens.comments) == 2  # one HELP, one TYPE for both replicas
    running = families["vllm:num_requests_running"].samples[0]
    assert running == 'vllm:num_requests_running{replica="ray-0",engine="0",model_name="m"} 1.0'
    assert 'lat_bucket{replica="ray-1",le="+Inf"} 4.0' in families["lat"].samples
    assert len(families["lat"].samples) == 6


async def _chunks(*parts: bytes):
    for part in parts:
        yield part


def test_sse_events_cut_at_event_boundaries():
    async def read() -> tuple[bytes, list[bytes]]:
        events = SseEvents(_chunks(b'data: {"a"', b": 1}\n\nda", b"ta: 2\n\ndata: [DO"))
        return await events.first(), [chunk async for chunk in events.rest()]

    first, rest = asyncio.run(read())
    assert first == b'data: {"a": 1}\n\n'
    assert rest == [b"data: 2\n\n", b"data: [DO"]  # a clean end passes its tail on


def test_sse_events_first_of_a_stream_with_no_complete_event():
    assert asyncio.run(SseEvents(_chunks(b"data: x")).first()) == b"data: x"


def test_broken_stream_event_is_vllms_error_shape_and_the_sdk_raises_it():
    raw = broken_stream_events("ray-1", httpx.RemoteProtocolError("peer closed"))
    first, done = raw.decode().strip().split("\n\n")
    error = json.loads(first.removeprefix("data: "))["error"]
    assert error["code"] == 502 and error["type"] == "server_error"
    assert "ray-1" in error["message"] and "incomplete" in error["message"]
    assert done == "data: [DONE]"

    ok_chunk = {"id": "c", "object": "text_completion", "created": 0, "model": "m"}
    ok_chunk["choices"] = [{"index": 0, "text": "a", "finish_reason": None, "logprobs": None}]
    body = f"data: {json.dumps(ok_chunk)}\n\n".encode() + raw

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    # The real SDK over a transport that replays the router's bytes (no server needed).
    http = httpx.Client(transport=httpx.MockTransport(handler))
    client = openai.OpenAI(base_url="http://router/v1", api_key="k", http_client=http)
    stream = client.completions.create(model="m", prompt="p", stream=True)
    assert next(iter(stream)).choices[0].text == "a"
    with pytest.raises(openai.APIError, match="ray-1 failed while streaming"):
        list(stream)


def test_forwarded_headers_keep_authorization_and_drop_hop_by_hop():
    headers = {"Authorization": "Bearer k", "Host": "router", "Content-Length": "3", "X-A": "1"}
    assert forwarded(headers) == {"Authorization": "Bearer k", "X-A": "1"}


def test_router_config_validation():
    with pytest.raises(ValueError, match="port"):
        RouterConfig(port=70000)
    with pytest.raises(ValueError, match="max_request_bytes"):
        RouterConfig(max_request_bytes=0)
    with pytest.raises(ValueError, match="host"):
        RouterConfig(host="0.0.0.0").check_exposure(None, None)
    RouterConfig(host="0.0.0.0").check_exposure("key", None)
    RouterConfig(host="0.0.0.0", allow_open_admin=True).check_exposure(None, None)


def test_cli_flags_to_configs():
    assert wants_cluster(["--replicas", "2"]) and wants_cluster(["--backend-url=http://a:1"])
    assert not wants_cluster(["--port", "8000"])
    argv = ["--replicas", "2", "--backend-url", "http://h:1", "--routing", "consistent_hashing"]
    argv += ["--max-tokens", "32", "--num-blocks", "64", "--port", "9000", "--api-key", "k"]
    argv += ["--replica-cpus", "2", "--ray-address", "auto"]
    cluster, router = configs_from_args(build_parser().parse_args(argv))
    assert cluster.routing == "session"  # SGLang's name for it
    assert cluster.backend_urls == ("http://h:1",) and cluster.num_replicas == 2
    assert cluster.server_options == {"max_tokens": 32}  # replicas keep other defaults
    assert cluster.engine_options["num_blocks"] == 64
    assert cluster.api_key == "k" and cluster.num_cpus_per_replica == 2.0
    assert cluster.ray_address == "auto" and router.port == 9000


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--replicas", "-1"], "num_replicas"),
        (["--replicas", "0"], "num_replicas"),
        (["--backend-url", "ftp://x"], "backend_urls"),
        (["--replicas", "1", "--replica-gpus", "-1"], "num_gpus_per_replica"),
        (["--replicas", "1", "--host", "0.0.0.0"], "host"),
        (["--replicas", "1", "--ray-address", "auto"], "admin-key"),
    ],
)
def test_cli_bad_flags_name_the_field(argv, field):
    with pytest.raises(ValueError, match=field):
        configs_from_args(build_parser().parse_args(argv))


def test_cli_refuses_unknown_policy(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--replicas", "1", "--routing", "round_robin"])
    assert "--routing" in capsys.readouterr().err
