"""Speculative decoding: tokens/s and acceptance, speculation on vs off in the same run.

Workloads (all on the bundled model, the target):
  chat    its arithmetic chat task (questions of the bundled eval set), n-gram proposer,
          greedy and T=1 (seeded)
  repeat  edit-and-repeat: a calculator tool chat whose history holds one call; the user
          asks again with the expression edited, the model repeats the call (~25 tokens);
          n-gram proposer
  pair    the chat task with the bundled draft model (src/rlserve/assets/draft) proposing
Each row runs batch 1, 4 and 16 with speculation off and on, rounds interleaved (off, on,
off, on, ...), one thread; a round generates for all 16 prompts of the workload, `batch`
at a time; tokens/s is the median round's output tokens / wall time, the
speedup the median of each round's on/off ratio (neighbouring rounds share the load of a
shared machine). The speculative engine is fresh per workload (its running acceptance).
acceptance = accepted / proposed guesses; "len" = tokens per verifying sequence-step
(1 + accepted / sequence steps); "same" = outputs equal token for token with and without
speculation (greedy, and T=1 with seeds).
--always-speculate replaces the engine's measured cost rule (speculate only in batch-size
buckets where it was timed cheaper per token) by one that speculates wherever the other
knobs allow: the raw cost of speculation at each batch size.
--offline measures only acceptance, without a speculative engine: each proposer is run
on the target's own greedy outputs and the verification rule is replayed.
Usage: python bench/speculative.py [--rounds 5] [--k 4] [--offline] [--workloads chat,...]
         [--draft-model PATH] [--threads 1] [--always-speculate]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer

from rlserve import Engine, SamplingParams
from rlserve.compat.builtin_tools import CALCULATOR_SCHEMA
from rlserve.config import BUNDLED_MODEL
from rlserve.engine.draft_proposer import DraftProposer
from rlserve.engine.ngram_proposer import NgramProposer
from rlserve.engine.proposer import ProposalInput, Proposer
from rlserve.engine.spec_rows import AlwaysPays

ASSETS = Path(BUNDLED_MODEL)
DRAFT = ASSETS / "draft"
BATCH_SIZES = (1, 4, 16)


@dataclass(frozen=True)
class Workload:
    name: str
    method: str  # the proposer: "ngram" | "draft"
    prompts: list[list[int]]
    params: list[SamplingParams]  # one per prompt


def chat_prompt(tokenizer, messages: list[dict]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer.encode(text, add_special_tokens=False)


def eval_questions(n: int) -> list[str]:
    lines = (ASSETS / "eval" / "arithmetic.jsonl").read_text().splitlines()
    return [json.loads(line)["question"] for line in lines[:n]]


def chat_workloads(tokenizer, sampled: bool) -> list[Workload]:
    prompts = [chat_prompt(tokenizer, [{"role": "user", "content": q}]) for q in eval_questions(16)]
    temperature = 1.0 if sampled else 0.0
    params = [SamplingParams(temperature=temperature, max_tokens=48, seed=i) for i in range(16)]
    suffix = "T=1" if sampled else "greedy"
    return [
        Workload(f"chat {suffix}", "ngram", prompts, params),
        Workload(f"pair {suffix}", "draft", prompts, params),
    ]


def tool_exchange(a: int, b: int) -> list[dict]:
    """One earlier turn: the question, the calculator call, its result, the answer."""
    call = {"name": "calculator", "arguments": {"expression": f"{a} * {b}"}}
    return [
        {"role": "user", "content": f"What is {a} * {b}?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": call}],
        },
        {"role": "tool", "content": str(a * b)},
        {"role": "assistant", "content": f"{a} * {b} = {a * b}"},
    ]


def repeat_workload(tokenizer) -> Workload:
    """The calculator call of an earlier turn, to repeat with the expression edited."""
    prompts = []
    for i in range(16):
        a, b = 300 + 17 * i, 20 + i
        messages = tool_exchange(a, b) + [{"role": "user", "content": f"What is {a} * {b + 1}?"}]
        text = tokenizer.apply_chat_template(
            messages, tools=[CALCULATOR_SCHEMA], add_generation_prompt=True, tokenize=False
        )
        prompts.append(tokenizer.encode(text, add_special_tokens=False))
    params = [SamplingParams(temperature=0.0, max_tokens=64)] * 16
    return Workload("repeat greedy", "ngram", prompts, params)


def workloads(tokenizer, names: set[str]) -> list[Workload]:
    every = chat_workloads(tokenizer, False) + [repeat_workload(tokenizer)]
    every += chat_workloads(tokenizer, True)
    return [w for w in every if w.name.split()[0] in names]


def spec_config(method: str, k: int, draft_model: Path) -> dict:
    config = {"method": method, "num_speculative_tokens": k}
    if method == "draft":
        config["draft_model"] = str(draft_model)
    return config


# --------------------------------------------------------------------------- online


def timed_round(engine: Engine, w: Workload, batch: int) -> tuple[float, list[list[int]], dict]:
    """Every prompt of `w`, `batch` at a time (one generate call per chunk)."""
    before = engine.stats()
    start = time.perf_counter()
    outs = []
    for at in range(0, len(w.prompts), batch):
        outs += engine.generate(w.prompts[at : at + batch], w.params[at : at + batch])
    seconds = time.perf_counter() - start
    after = engine.stats()
    tokens = [o.outputs[0].token_ids for o in outs]
    delta = {key: after[key] - before.get(key, 0) for key in after if key.startswith("spec_")}
    return sum(map(len, tokens)) / seconds, tokens, delta


def compare(off: Engine, on: Engine, w: Workload, batch: int, rounds: int) -> dict:
    timed_round(off, w, batch), timed_round(on, w, batch)  # warm: prefix cache, kernels
    rates: dict[str, list[float]] = {"off": [], "on": [], "ratio": []}
    spec: dict[str, int] = {}
    same = True
    for _ in range(rounds):
        rate_off, tokens_off, _ = timed_round(off, w, batch)
        rate_on, tokens_on, delta = timed_round(on, w, batch)
        rates["off"].append(rate_off)
        rates["on"].append(rate_on)
        rates["ratio"].append(rate_on / rate_off)  # neighbours share the machine's load
        same &= tokens_on == tokens_off
        for key, value in delta.items():
            spec[key] = spec.get(key, 0) + value
    off_rate, on_rate = statistics.median(rates["off"]), statistics.median(rates["on"])
    proposed, accepted = spec.get("spec_proposed_tokens", 0), spec.get("spec_accepted_tokens", 0)
    seq_steps = spec.get("spec_sequence_steps", 0)
    return {
        "off": off_rate,
        "on": on_rate,
        "speedup": statistics.median(rates["ratio"]),
        "acceptance": accepted / proposed if proposed else float("nan"),
        "len": 1 + accepted / seq_steps if seq_steps else float("nan"),
        "same": same,
    }


def run_online(ws: list[Workload], k: int, rounds: int, draft_model: Path, always: bool) -> None:
    off = Engine()
    print(
        f"{'workload':<14} {'batch':>5} {'off tok/s':>10} {'on tok/s':>9} {'speedup':>8} "
        f"{'accept':>7} {'len':>5} same"
    )
    for w in ws:
        # Fresh per workload: its running acceptance starts anew.
        on = Engine(speculative=spec_config(w.method, k, draft_model))
        if always:
            on.step_runner.speculator.costs = AlwaysPays()
        for batch in BATCH_SIZES:
            r = compare(off, on, w, batch, rounds)
            same = "yes" if r["same"] else "NO"
            print(
                f"{w.name:<14} {batch:>5} {r['off']:>10.0f} {r['on']:>9.0f} "
                f"{r['speedup']:>7.2f}x {r['acceptance']:>7.2f} {r['len']:>5.2f} {same}",
                flush=True,
            )


# --------------------------------------------------------------------------- offline


def replay(proposer: Proposer, prompt: list[int], output: list[int], k: int) -> tuple[int, ...]:
    """(proposed, accepted, verifying steps, tokens from them) of greedy verification
    replayed on the target's own output; its first token comes from prefill."""
    proposed = accepted = steps = 0
    pos = 1
    while pos < len(output):
        ids = prompt + output[:pos]
        item = ProposalInput(("s", 0), ids, len(prompt), min(k, len(output) - pos))
        guess = proposer.propose([item])[0]
        hits = 0
        while hits < len(guess) and guess[hits] == output[pos + hits]:
            hits += 1
        proposed, accepted, steps = proposed + len(guess), accepted + hits, steps + 1
        pos += hits + 1
    return proposed, accepted, steps


def run_offline(ws: list[Workload], k: int, draft_model: Path) -> None:
    target = Engine()
    greedy = [w for w in ws if "greedy" in w.name]
    print(f"{'workload':<14} {'acceptance':>10} {'len':>5} {'steps saved':>11}")
    for w in greedy:
        proposer = make_offline_proposer(w.method, k, target, draft_model)
        outs = target.generate(w.prompts, w.params)
        totals = [0, 0, 0]
        for prompt, out in zip(w.prompts, outs, strict=True):
            counts = replay(proposer, prompt, out.outputs[0].token_ids, k)
            totals = [t + c for t, c in zip(totals, counts, strict=True)]
        proposed, accepted, steps = totals
        decoded = steps + accepted  # tokens those verifying steps produced
        print(
            f"{w.name:<14} {accepted / max(1, proposed):>10.2f} "
            f"{decoded / max(1, steps):>5.2f} {1 - steps / max(1, decoded):>10.0%}"
        )


def make_offline_proposer(method: str, k: int, target: Engine, draft_model: Path) -> Proposer:
    if method == "ngram":
        return NgramProposer(1, 4)
    config = argparse.Namespace(draft_model=str(draft_model), num_speculative_tokens=k)
    return DraftProposer(
        config,
        device="cpu",
        dtype="float32",
        target_vocab_size=target.model.config.vocab_size,
        target_tokenizer=target.tokenizer,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per mode")
    parser.add_argument("--k", type=int, default=4, help="num_speculative_tokens")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workloads", default="chat,repeat,pair")
    parser.add_argument("--draft-model", type=Path, default=DRAFT, help="the draft checkpoint")
    parser.add_argument("--offline", action="store_true", help="acceptance only, replayed")
    parser.add_argument(
        "--always-speculate", action="store_true", help="no measured auto-off (raw costs)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(BUNDLED_MODEL)
    ws = workloads(tokenizer, set(args.workloads.split(",")))
    if args.offline:
        run_offline(ws, args.k, args.draft_model)
    else:
        run_online(ws, args.k, args.rounds, args.draft_model, args.always_speculate)


if __name__ == "__main__":
    main()
