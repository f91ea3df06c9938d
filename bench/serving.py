"""Start `rlserve serve` as a subprocess for the HTTP benchmarks, and wait until healthy."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(flags: list[str], model: str | None, port: int) -> subprocess.Popen:
    """`rlserve serve --port PORT *flags` (on `model`, else the bundled one), once healthy."""
    cmd = [sys.executable, "-m", "rlserve.server.cli", "--port", str(port), *flags]
    if model:
        cmd += ["--model", model]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(cmd, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode}")
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("the server did not become healthy in time")
