"""`rlserve` command line: generate, serve, sandbox, eval."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "serve":
        from rlserve.cluster.cli import main as cluster_main
        from rlserve.cluster.cli import wants_cluster

        if wants_cluster(argv[1:]):  # many replicas behind the router
            return cluster_main(argv[1:])
        from rlserve.server.cli import main as serve_main

        return serve_main(argv[1:]) or 0
    if argv and argv[0] == "sandbox":
        from rlserve.sandbox.cli import main as sandbox_main

        return sandbox_main(argv[1:]) or 0
    if argv and argv[0] == "eval":
        from rlserve.eval.cli import main as eval_main

        return eval_main(argv[1:])
    parser = argparse.ArgumentParser(prog="rlserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="complete a prompt and print tokens and logprobs")
    gen.add_argument("prompt")
    gen.add_argument("--model", default=None, help="checkpoint folder (default: bundled)")
    gen.add_argument("-n", type=int, default=1)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--logprobs", action="store_true", help="print per-token logprobs")
    gen.add_argument("--chat", action="store_true", help="apply the chat template")
    gen.add_argument("--json", action="store_true", help="print one JSON object per sample")
    sub.add_parser(
        "serve",
        help="OpenAI-compatible + RL server (see `rlserve serve -h`); with --replicas N "
        "or --backend-url URL, many replicas behind one router (`rlserve serve --replicas 1 -h`)",
    )
    sub.add_parser("sandbox", help="Python sandbox over HTTP (see `rlserve sandbox -h`)")
    sub.add_parser("eval", help="score a model on math problems (see `rlserve eval -h`)")
    args = parser.parse_args(argv)
    return _generate(args)


def _generate(args: argparse.Namespace) -> int:
    from rlserve import Engine, SamplingParams

    try:
        params = SamplingParams(
            n=args.n,
            temperature=args.temperature,
            top_p=args.top_p,
            max_tokens=args.max_tokens,
            seed=args.seed,
        )
        engine = Engine(args.model)
        if args.chat:
            out = engine.chat([{"role": "user", "content": args.prompt}], params)[0]
        else:
            out = engine.generate(args.prompt, params)[0]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if out.error is not None:  # failed inside the engine: its partial output is not an answer
        print(f"error: {out.error}", file=sys.stderr)
        return 1
    for c in out.outputs:
        if args.json:
            print(
                json.dumps(
                    {
                        "index": c.index,
                        "text": c.text,
                        "token_ids": c.token_ids,
                        "logprobs": c.logprobs,
                        "finish_reason": c.finish_reason,
                    }
                )
            )
            continue
        print(f"--- sample {c.index} (finish_reason={c.finish_reason}) ---")
        print(c.text)
        print(f"token_ids: {c.token_ids}")
        if args.logprobs:
            pieces = [
                f"{engine.tokenizer.decode([t])!r}:{lp:.4f}"
                for t, lp in zip(c.token_ids, c.logprobs, strict=True)
            ]
            print("logprobs: " + " ".join(pieces))
    return 0


if __name__ == "__main__":
    sys.exit(main())
