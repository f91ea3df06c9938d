"""Structured outputs: ms per generated token with and without a JSON schema, same run.

1. Engine (bundled model): a batch of chat prompts, sampled, free vs constrained by a JSON
   schema; ms per generated token (wall time / tokens), and the share the grammar takes.
2. Grammar alone on a tokenizer (`--tokenizer DIR`, e.g. one with Qwen's 151k vocabulary):
   compile time of the schema, and per-token mask + advance cost along a valid document.

Why llguidance (measured on this machine, 2 cores, Qwen2/3's 151,851-token vocabulary,
the schema below; xgrammar 0.2.9 vs llguidance 1.9.1):
  compile: llguidance 1.9-4.6 ms, xgrammar 41-49 ms; mask: llguidance 0.20 ms/token,
  xgrammar 0.09 ms/token (+0.14 ms for either to unpack the bitmask to a bool tensor);
  tokenizer index: llguidance ~1 s once, xgrammar ~1 s once. Install: llguidance is one
  7.7 MB wheel with no dependencies; xgrammar needs apache-tvm-ffi, and triton (a 286 MB
  wheel) and torch as dependencies, which would fight the pinned CPU torch. Both masks
  are far below a forward step; per-request compiles (each request brings its schema)
  are 10x cheaper with llguidance, and its validation gives the 400s their messages.

Usage: python bench/structured.py [--threads 2] [--tokenizer DIR] [--vocab-size N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass

import torch
from transformers import AutoTokenizer

from rlserve import Engine, SamplingParams
from rlserve.engine.structured import GrammarCompiler, StructuredOutput

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
            "required": ["city", "zip"],
        },
        "role": {"enum": ["admin", "user", "guest"]},
    },
    "required": ["name", "age", "tags", "address", "role"],
    "additionalProperties": False,
}
DOCUMENT = {
    "name": "Ada Lovelace, the first programmer",
    "age": 36,
    "tags": ["math", "engines", "poetry of science"],
    "address": {"city": "London", "zip": "W1"},
    "role": "admin",
}
NEW_TOKENS = 48


@dataclass
class Params(SamplingParams):
    structured: StructuredOutput | None = None  # until SamplingParams has the field


def engine_runs(engine: Engine, repeats: int) -> dict[str, tuple[float, int]]:
    """Median ms per generated token, and tokens a run, free and constrained; the runs
    alternate so that load from elsewhere on the machine hits both alike."""
    prompts = [
        engine.render_chat([{"role": "user", "content": f"Describe person {a} as JSON."}])
        for a in range(8)
    ]
    # ignore_eos: both generate until max_tokens (or until the grammar is complete).
    common = dict(temperature=1.0, max_tokens=NEW_TOKENS, seed=0, ignore_eos=True)
    cases = {
        "free text": Params(**common),
        "JSON schema": Params(**common, structured=StructuredOutput(json=SCHEMA)),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    tokens = dict.fromkeys(cases, 0)
    for params in cases.values():
        engine.generate(prompts, params)  # warm-up (and the grammar's first compile)
    for _ in range(repeats):
        for name, params in cases.items():
            engine.reset_prefix_cache()
            start = time.perf_counter()
            outs = engine.generate(prompts, params)
            tokens[name] = sum(len(c.token_ids) for o in outs for c in o.outputs)
            times[name].append(1000 * (time.perf_counter() - start) / tokens[name])
    return {name: (statistics.median(times[name]), tokens[name]) for name in cases}


def grammar_costs(tokenizer, vocab_size: int, eos: set[int]) -> dict[str, float]:
    """Compile (cold, then cached) and per-token mask + advance along DOCUMENT."""
    compiler = GrammarCompiler(tokenizer, vocab_size, eos)
    start = time.perf_counter()
    compiler.tokenizer  # noqa: B018 - the index, built once per engine
    index_s = time.perf_counter() - start
    structured = StructuredOutput(json=SCHEMA, any_whitespace=False)
    start = time.perf_counter()
    matcher = compiler.matcher(structured)
    compile_ms = 1000 * (time.perf_counter() - start)
    ids = tokenizer.encode(json.dumps(DOCUMENT, separators=(",", ":")), add_special_tokens=False)
    per_token = []
    for token in ids:
        start = time.perf_counter()
        mask = compiler.masks([matcher], [True], torch.device("cpu"))[0]
        assert mask[token], tokenizer.decode([token])
        matcher.advance(token)
        per_token.append(1000 * (time.perf_counter() - start))
    return {
        "vocab": vocab_size,
        "index_s": index_s,
        "compile_ms": compile_ms,
        "mask_ms": statistics.median(per_token),
        "tokens": len(ids),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokenizer", help="also measure the grammar on this tokenizer")
    parser.add_argument("--vocab-size", type=int, help="its model's vocab size (logits)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engine = Engine()
    runs = engine_runs(engine, args.repeats)
    print(f"engine, bundled model (vocab {engine.model.config.vocab_size}), batch 8, sampled:")
    free = runs["free text"][0]
    for name, (ms, tokens) in runs.items():
        print(f"  {name:<12} {ms:.3f} ms/token ({tokens} tokens a run; {ms - free:+.3f})")
    rows = [grammar_costs(engine.tokenizer, engine.model.config.vocab_size, engine.eos_token_ids)]
    if args.tokenizer:
        tok = AutoTokenizer.from_pretrained(args.tokenizer)
        rows.append(grammar_costs(tok, args.vocab_size or len(tok), {tok.eos_token_id}))
    print("grammar alone (llguidance): tokenizer index, schema compile, mask + advance per token")
    for r in rows:
        print(
            f"  vocab {r['vocab']:>6}: index {r['index_s']:.2f} s, compile {r['compile_ms']:.1f} "
            f"ms, {r['mask_ms']:.3f} ms/token (median over {r['tokens']} tokens)"
        )


if __name__ == "__main__":
    main()
