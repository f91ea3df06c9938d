"""Where one engine step's time goes: model linears, attention, norm/rope/activation, the
rest of the model (residuals, views, embedding, Python), runner metadata, the sampler,
output processing, the scheduler and the rest of the step.

Each part is timed by wrapping its function (exclusive time: a part nested in another is
subtracted from it), so the split adds a little overhead of its own; the un-instrumented
step time is printed next to it. Two steps are profiled for every model, dtype and batch:
  decode  B sequences, one token each (context ~ prompt + a few steps)
  mixed   the same B decodes plus one 128-token prefill (a request with max_tokens=1)
Medians over `--steps` steps per part (a median split need not add up to the median step).
`--compare ENV=VALUE` adds a column per case run with that setting (RLSERVE_FUSED_OPS=0: the
torch reference ops; RLSERVE_BF16_PACKED=1: packed bf16 weights), its steps interleaved with
the default's in the same engine: the fair A/B on a busy machine.
Usage: python bench/step_profile.py [--models bundled,small] [--dtype float32,bfloat16]
         [--batch 1,16] [--steps 30] [--threads 1]
         [--compare RLSERVE_FUSED_OPS=0] [--compare RLSERVE_BF16_PACKED=1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

import torch
from checkpoint import qwen3_small_checkpoint

from rlserve import Engine, SamplingParams
from rlserve.config import BUNDLED_MODEL
from rlserve.engine import core, model_runner, output_processor, scheduler, step
from rlserve.models import linear, llama

MODELS = {"bundled": lambda: BUNDLED_MODEL, "small": qwen3_small_checkpoint}
PROMPT, MIXED_PROMPT = 64, 128
PARTS = (
    "linear",
    "attention",
    "norm",
    "rope",
    "activation",
    "model rest",
    "runner metadata",
    "sampler",
    "output processing",
    "scheduler",
    "step rest",
)


class Timers:
    """Exclusive time per part; a stack so nested parts are not counted twice."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.stack: list[list[float]] = []  # per open part: [child seconds]
        self.enabled = False

    def wrap(self, part: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            if not self.enabled:
                return fn(*args, **kwargs)
            self.stack.append([0.0])
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                children = self.stack.pop()[0]
                self.totals[part] += elapsed - children
                if self.stack:
                    self.stack[-1][0] += elapsed

        timed.__wrapped__ = fn
        return timed

    def patch(self, owner: object, name: str, part: str) -> None:
        if hasattr(owner, name):
            setattr(owner, name, self.wrap(part, getattr(owner, name)))


def instrument(timers: Timers) -> None:
    """Wrap each part's functions where they are looked up (class attributes, module
    globals of their callers). Names that do not exist in this version are skipped."""
    timers.patch(linear.Linear, "forward", "linear")
    timers.patch(llama.LlamaModel, "compute_logits", "linear")
    timers.patch(llama, "paged_attention", "attention")
    timers.patch(llama.RMSNorm, "forward", "norm")
    for name in ("rms_norm", "add_rms_norm"):
        timers.patch(llama, name, "norm")
    for name in ("apply_rope", "qk_norm_rope"):
        timers.patch(llama, name, "rope")
    timers.patch(llama.RotaryEmbedding, "forward", "rope")
    timers.patch(llama, "silu_mul", "activation")
    timers.patch(llama.LlamaModel, "forward", "model rest")
    timers.patch(model_runner.ModelRunner, "run", "runner metadata")
    timers.patch(step, "sample", "sampler")
    for name in ("check_stop", "request_delta", "banned_token_ids"):
        timers.patch(output_processor.OutputProcessor, name, "output processing")
    timers.patch(scheduler.Scheduler, "schedule", "scheduler")
    timers.patch(core.EngineCore, "step", "step rest")


def decoding_engine(path, dtype: str, batch: int) -> Engine:
    engine = Engine(
        path, dtype=dtype, max_model_len=1024, max_num_seqs=batch + 1, kv_cache_memory=1 << 30
    )
    vocab = engine.model.config.vocab_size
    for i in range(batch):
        engine.add_request(
            [(7 * i + t) % vocab for t in range(PROMPT)],
            SamplingParams(temperature=1.0, max_tokens=900, ignore_eos=True, seed=i),
        )
    while engine.num_running < batch or _prefilling(engine):
        engine.step()
    for _ in range(3):  # warm-up decode steps
        engine.step()
    return engine


def _prefilling(engine: Engine) -> bool:
    return any(s.num_computed_tokens < s.num_prompt_tokens for s in engine.scheduler.running)


def add_prefill(engine: Engine, seed: int) -> None:
    """A request whose prefill rides along the next step, then finishes."""
    vocab = engine.model.config.vocab_size
    prompt = [(seed * 131 + 17 * t) % vocab for t in range(MIXED_PROMPT)]
    engine.add_request(prompt, SamplingParams(max_tokens=1, seed=seed))


def profile(
    engine: Engine,
    timers: Timers,
    steps: int,
    mixed: bool,
    variants: dict[str, dict[str, str | None]],
) -> dict[str, dict[str, float]]:
    """Per variant (environment settings, e.g. fused ops on / off): median seconds of each
    part, and of the whole step with and without the timers. Variants and timed / plain
    steps are interleaved step by step (variants in ABBA order), so drift on a shared
    machine and what a step leaves to the next (allocator state, caches) hit all alike."""
    samples = {name: defaultdict(list) for name in variants}
    for i in range(2 * steps):
        timed = i % 2 == 1
        order = list(variants.items())
        for name, env in order if i % 4 < 2 else order[::-1]:  # ABBA: no variant goes first
            set_env(env)
            if mixed:
                add_prefill(engine, seed=10_000 + 10 * i + len(samples[name]))
            timers.enabled, timers.totals = timed, defaultdict(float)
            start = time.perf_counter()
            engine.step()
            elapsed = time.perf_counter() - start
            got = samples[name]
            got["step (timed)" if timed else "step (plain)"].append(elapsed)
            for part in PARTS if timed else ():
                got[part].append(timers.totals.get(part, 0.0))
    timers.enabled = False
    return {
        name: {part: statistics.median(values) for part, values in got.items()}
        for name, got in samples.items()
    }


def set_env(env: dict[str, str | None]) -> None:
    """Apply a variant's settings; None removes a variable (its default applies)."""
    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def print_table(rows: dict[str, dict[str, float]]) -> None:
    columns = list(rows)
    print("\n| part (ms, median) | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for part in ("step (plain)", "step (timed)", *PARTS):
        cells = " | ".join(f"{rows[c][part] * 1e3:.3f}" for c in columns)
        print(f"| {part} | {cells} |")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="bundled,small", help=f"of {sorted(MODELS)}")
    parser.add_argument("--dtype", default="float32,bfloat16")
    parser.add_argument("--batch", default="1,16")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="ENV=VALUE",
        help="also run every step with this setting, interleaved (e.g. RLSERVE_FUSED_OPS=0: "
        "the torch reference ops; RLSERVE_BF16_PACKED=1: packed bf16 weights); repeatable",
    )
    args = parser.parse_args()
    args.models = args.models.split(",")
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"--models: unknown {unknown}; known: {sorted(MODELS)}")
    args.dtypes = args.dtype.split(",")
    bad = sorted(set(args.dtypes) - {"float32", "bfloat16"})
    if bad:
        parser.error(f"--dtype: unknown {bad}; known: float32, bfloat16")
    args.batches = [int(b) for b in args.batch.split(",")]
    if any("=" not in c for c in args.compare):
        parser.error("--compare: expected ENV=VALUE")
    if args.steps < 1 or any(b < 1 for b in args.batches):
        parser.error("--steps and --batch must be positive")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    timers = Timers()
    instrument(timers)
    rows: dict[str, dict[str, float]] = {}
    settings = [c.split("=", 1) for c in args.compare]
    variants: dict[str, dict[str, str | None]] = {"": {name: None for name, _ in settings}}
    for name, value in settings:
        variants[f" {name}={value}"] = variants[""] | {name: value}
    for name in args.models:
        path = MODELS[name]()
        for dtype in args.dtypes:
            for batch in args.batches:
                engine = decoding_engine(path, dtype, batch)
                for mixed in (False, True):
                    label = f"{name} {dtype[:4]} b{batch} {'mixed' if mixed else 'decode'}"
                    for variant, row in profile(
                        engine, timers, args.steps, mixed, variants
                    ).items():
                        rows[f"{label}{variant}"] = row
                        print(f"{label}{variant}: {row['step (plain)'] * 1e3:.2f} ms", flush=True)
                del engine
    print(f"threads {args.threads}")
    print_table(rows)


if __name__ == "__main__":
    main()
