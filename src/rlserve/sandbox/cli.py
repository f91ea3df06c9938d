"""`rlserve sandbox`: serve the Python sandbox over HTTP (POST /execute, GET /health)."""

from __future__ import annotations

import argparse
import logging

from rlserve.sandbox.config import SandboxConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlserve sandbox", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--timeout", type=float, default=10.0, help="default seconds per run")
    parser.add_argument("--max-concurrency", type=int, default=4)
    parser.add_argument("--memory-mb", type=int, default=1024)
    parser.add_argument(
        "--uid-base",
        type=int,
        default=61000,
        help="as root, first uid of the pool sandbox uids are leased from "
        "(shared with every other sandbox on the machine)",
    )
    parser.add_argument("--uid-pool-size", type=int, default=4000, help="uids in that pool")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    try:
        config = SandboxConfig(
            timeout_s=args.timeout,
            max_concurrency=args.max_concurrency,
            memory_bytes=args.memory_mb * 1024**2,
            uid_base=args.uid_base,
            uid_pool_size=args.uid_pool_size,
        )
    except ValueError as e:
        parser.error(str(e))
    import uvicorn

    from rlserve.sandbox import IsolationUnavailable, Sandbox, UidsUnavailable
    from rlserve.sandbox.service import create_sandbox_app

    try:
        sandbox = Sandbox(config)
    except (IsolationUnavailable, UidsUnavailable) as e:
        parser.exit(1, f"rlserve sandbox: {e}\n")
    with sandbox:
        logging.getLogger("rlserve.sandbox").warning("sandbox isolation: %s", sandbox.isolation)
        print(
            f"rlserve sandbox on http://{args.host}:{args.port} (isolation: {sandbox.isolation})",
            flush=True,
        )
        uvicorn.run(
            create_sandbox_app(sandbox), host=args.host, port=args.port, log_level=args.log_level
        )
    return 0
