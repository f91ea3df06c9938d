"""HTTP leg of bench/weight_sync.py: push a state dict to `rlserve serve` over loopback.

The server runs as a subprocess; this (bench) process is the second process that streams
the safetensors bytes with `rlserve.client.Client.update_weights`.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from rlserve.client import Client

GOAL_GBPS = 1.0
_LAUNCH = "import sys; from rlserve.cli import main; sys.exit(main())"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, server: subprocess.Popen, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"rlserve serve exited with status {server.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError("rlserve serve did not become healthy")


def start_server(checkpoint_path: str | Path, port: int) -> subprocess.Popen:
    """`rlserve serve --model checkpoint_path` on 127.0.0.1:`port` (small KV cache)."""
    cmd = [
        sys.executable,
        "-c",
        _LAUNCH,
        "serve",
        "--model",
        str(checkpoint_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num-blocks",
        "64",
        "--max-batch",
        "8",
        "--log-level",
        "WARNING",
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL)


def measure_http_update(
    checkpoint_path: str | Path, state_dict: dict[str, Any], nbytes: int, repeats: int = 3
) -> tuple[str, str, str, str]:
    """Best of `repeats` `client.update_weights(state_dict)` calls against a server on
    `checkpoint_path`; a (measure, rlserve, peer, ratio) row with the GB/s reached."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(checkpoint_path, port)
    try:
        _wait_healthy(url, server)
        with Client(url, max_retries=0, timeout=600) as client:
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                client.update_weights(state_dict)
                times.append(time.perf_counter() - start)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    best = min(times)
    gbps = nbytes / best / 1e9
    first = nbytes / times[0] / 1e9
    return (
        "POST /update_weights, streamed safetensors over loopback",
        f"{best * 1e3:.0f} ms ({gbps:.2f} GB/s; the first update {times[0] * 1e3:.0f} ms, "
        f"{first:.2f} GB/s, also faults in the receive buffer)",
        f"goal >= {GOAL_GBPS:.0f} GB/s",
        f"{gbps / GOAL_GBPS:.2f}x of goal",
    )
