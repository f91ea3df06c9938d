"""`rlserve eval`: score a model on math problems (the bundled set by default).

rlserve eval                                   # bundled model, bundled set, greedy
rlserve eval --k 8 --temperature 1.0 --plot eval.png
rlserve eval --data gsm8k.jsonl --model ./ckpt --tir --output samples.jsonl
rlserve eval --server http://localhost:8000 --model ./ckpt   # any OpenAI-compatible server
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

from rlserve.prompts import prompt_names

# Flags that fill `EvalConfig` fields of the same name when given (its defaults rule).
CONFIG_FLAGS = (
    "k",
    "temperature",
    "top_p",
    "max_tokens",
    "seed",
    "prompt",
    "tir",
    "code_begin",
    "code_end",
    "max_code_runs",
    "sandbox_timeout_s",
    "problem_budget_s",
    "run_budget_s",
    "early_stop",
)
BACKEND_KINDS = ("auto", "native", "huggingface", "remote")


def build_parser(prog: str = "rlserve eval") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.split("\n\n")[0],
        epilog="Defaults not shown are rlserve.eval.EvalConfig's.",
    )
    data = parser.add_argument_group("problems")
    data.add_argument("--data", default=None, help="JSONL problems (default: the bundled set)")
    data.add_argument("--question-field", default=None, help="default: question, else problem")
    data.add_argument("--answer-field", default=None, help="default: answer, else solution")
    data.add_argument("--limit", type=int, default=None, help="only the first N problems")
    gen = parser.add_argument_group("generation")
    gen.add_argument("--k", type=int, default=None, help="samples per problem")
    gen.add_argument("--temperature", type=float, default=None)
    gen.add_argument("--top-p", type=float, default=None)
    gen.add_argument("--max-tokens", type=int, default=None, help="per generation round")
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--prompt", default=None, help=f"template: {', '.join(prompt_names())}")
    gen.add_argument("--tir", action="store_true", default=None, help="run code in the sandbox")
    gen.add_argument("--code-begin", default=None, help="TIR code start marker")
    gen.add_argument("--code-end", default=None, help="TIR code end marker")
    gen.add_argument("--max-code-runs", type=int, default=None, help="TIR code runs a sample")
    gen.add_argument("--sandbox-timeout-s", type=float, default=None, help="TIR limit a code run")
    gen.add_argument("--problem-budget-s", type=float, default=None, help="wall clock a problem")
    gen.add_argument("--run-budget-s", type=float, default=None, help="wall clock for the run")
    gen.add_argument(
        "--no-early-stop", dest="early_stop", action="store_false", default=None,
        help="sample all k even when the majority answer is settled",
    )  # fmt: skip
    where = parser.add_argument_group("backend")
    where.add_argument("--backend", choices=BACKEND_KINDS, default=None,
                       help="default: remote with --server, else auto")  # fmt: skip
    where.add_argument("--model", default=None, help="checkpoint folder (remote: its tokenizer)")
    where.add_argument("--server", default=None, help="base URL of an OpenAI-compatible server")
    where.add_argument("--api-key", default=None, help="the server's API key")
    where.add_argument("--dialect", choices=("rlserve", "vllm", "sglang"), default="rlserve")
    out = parser.add_argument_group("output")
    out.add_argument("--output", default=None, help="write every sample to this JSONL")
    out.add_argument("--summary-json", default=None, help="write the scores to this JSON")
    out.add_argument("--plot", default=None, help="write accuracy vs k and lengths to a PNG")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None, backend: Any = None) -> int:
    """Run `rlserve eval` with `argv`; `backend` (an `InferenceBackend`) replaces the one
    the flags describe, for embedding and tests. 0 on success, 2 on bad input."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return _run(args, backend)
    except (ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, backend: Any) -> int:
    from rlserve.eval.problems import load_problems
    from rlserve.eval.runner import EvalConfig, run_eval

    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
        raise ValueError("--plot needs matplotlib: pip install 'rlserve[plot]'")
    problems = load_problems(args.data, args.question_field, args.answer_field, args.limit)
    config = EvalConfig(**_config_fields(args, EvalConfig))
    owned = backend is None
    backend = _backend(args) if owned else backend
    start = time.perf_counter()
    try:
        records = run_eval(backend, problems, config, progress=not args.no_progress)
    finally:
        if owned:
            backend.close()
    _report(args, records, config.k, time.perf_counter() - start)
    return 0


def _config_fields(args: argparse.Namespace, config_type: type) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(config_type)}
    given = {name: getattr(args, name) for name in CONFIG_FLAGS if getattr(args, name) is not None}
    unknown = sorted(set(given) - known)
    if unknown:  # a flag this runner does not take must not be dropped silently
        flag = "--" + unknown[0].replace("_", "-")
        raise ValueError(f"{flag} is not supported by this runner's EvalConfig")
    return given


def _backend(args: argparse.Namespace) -> Any:
    from rlserve.backends import create_backend

    kind = args.backend or ("remote" if args.server else "auto")
    if kind == "remote":
        if args.server is None:
            raise ValueError("--backend remote needs --server URL")
        return create_backend(
            kind, model=args.model, base_url=args.server, api_key=args.api_key,
            dialect=args.dialect,
        )  # fmt: skip
    if args.server is not None:
        raise ValueError(f"--server is for the remote backend, not {kind}")
    return create_backend(kind, model=args.model)


def _report(args: argparse.Namespace, records: list, k: int, wall_s: float) -> None:
    from rlserve.eval.metrics import summarize
    from rlserve.eval.records import write_jsonl
    from rlserve.eval.report import plot, print_summary

    summary = summarize(records, k)
    print_summary(summary, wall_s=wall_s)
    if args.output is not None:
        print(f"samples: {write_jsonl(records, args.output)}")
    if args.summary_json is not None:
        path = Path(args.summary_json).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**summary.to_dict(), "wall_s": wall_s}, indent=2) + "\n")
        print(f"summary: {path}")
    if args.plot is not None:
        print(f"plot: {plot(records, args.plot, k)}")
