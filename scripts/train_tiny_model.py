"""Build the tiny arithmetic chat model bundled in ``src/rlserve/assets``.

Everything happens offline and deterministically (fixed seeds):

1. generate a synthetic corpus of ChatML conversations about integer arithmetic, some of
   which offer a ``calculator`` tool and exercise the ``<tool_call>`` / ``<tool_response>`` flow;
2. train a byte-level BPE tokenizer (digits split into single tokens) on that corpus;
3. train a small ``Qwen3ForCausalLM`` on CPU, with the loss on assistant tokens only;
4. evaluate it greedily on held-out problems and save model, tokenizer and README.

Run from the repository root (takes roughly 20-30 minutes on 2 CPU cores):

    .venv/bin/python scripts/train_tiny_model.py                # default step count
    .venv/bin/python scripts/train_tiny_model.py --steps 500    # quick smoke run

``--draft`` trains the speculative-decoding draft instead (``src/rlserve/assets/draft``): the
same corpus and the bundled model's own tokenizer (a draft must share it), a narrower
2-layer model (~8 minutes on one idle core; the shipped one was trained this way):

    .venv/bin/python scripts/train_tiny_model.py --draft --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from tokenizers.trainers import BpeTrainer
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers.utils.chat_template_utils import render_jinja_template

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "src" / "rlserve" / "assets"
DRAFT_OUT = DEFAULT_OUT / "draft"
# The bundled model's shape, and the draft's: ~6x fewer parameters, the same head_dim.
MODEL_SHAPE = dict(
    hidden_size=256,
    intermediate_size=704,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
)
DRAFT_SHAPE = dict(
    hidden_size=128,
    intermediate_size=352,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
)

EOT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [EOT, IM_START, IM_END]
# Single-id tokens that, as in Qwen, survive ``skip_special_tokens=True``.
TAG_TOKENS = [
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
]

# Qwen-style split: letters runs, single digits, punctuation runs, newlines, other whitespace.
PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CHAT_TEMPLATE = r"""
{%- macro text_of(content) -%}
    {%- if content is string -%}{{- content -}}
    {%- elif content is mapping -%}{{- content | tojson -}}
    {%- elif content is iterable -%}
        {%- for part in content -%}
            {%- if part is string -%}{{- part -}}
            {%- elif part.type == 'text' -%}{{- part.text -}}{%- endif -%}
        {%- endfor -%}
    {%- elif content is not none -%}{{- content -}}
    {%- endif -%}
{%- endmacro -%}
{%- set has_system = messages | length > 0 and messages[0].role == 'system' -%}
{%- if tools -%}
    {{- '<|im_start|>system\n' -}}
    {%- if has_system -%}{{- text_of(messages[0].content) + '\n\n' -}}{%- endif -%}
    {{- '# Tools\n\nYou can call functions to help with the request.\n\n' -}}
    {{- 'The available functions are listed inside <tools></tools> XML tags:\n<tools>' -}}
    {%- for tool in tools -%}{{- '\n' + (tool | tojson) -}}{%- endfor -%}
    {{- '\n</tools>\n\nTo call a function, reply with a JSON object holding its name and ' -}}
    {{- 'arguments inside <tool_call></tool_call> XML tags:\n<tool_call>\n' -}}
    {{- '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n' -}}
{%- elif has_system -%}
    {{- '<|im_start|>system\n' + text_of(messages[0].content) + '<|im_end|>\n' -}}
{%- endif -%}
{%- for message in messages -%}
    {%- if message.role == 'system' and loop.first -%}
        {#- already rendered above -#}
    {%- elif message.role == 'assistant' -%}
        {%- set content = text_of(message.content) -%}
        {{- '<|im_start|>assistant\n' + content -}}
        {%- for call in message.tool_calls or [] -%}
            {%- if content or not loop.first -%}{{- '\n' -}}{%- endif -%}
            {%- set fn = call.function if call.function else call -%}
            {{- '<tool_call>\n{"name": "' + fn.name + '", "arguments": ' -}}
            {%- if fn.arguments is string -%}{{- fn.arguments -}}
            {%- else -%}{{- fn.arguments | tojson -}}{%- endif -%}
            {{- '}\n</tool_call>' -}}
        {%- endfor -%}
        {{- '<|im_end|>\n' -}}
    {%- elif message.role == 'tool' -%}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' -%}
            {{- '<|im_start|>user' -}}
        {%- endif -%}
        {{- '\n<tool_response>\n' + text_of(message.content) + '\n</tool_response>' -}}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' -%}
            {{- '<|im_end|>\n' -}}
        {%- endif -%}
    {%- else -%}
        {{- '<|im_start|>' + message.role + '\n' + text_of(message.content) + '<|im_end|>\n' -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}
""".strip()

QUESTION_FORMS = [
    "What is {e}?",
    "What's {e}?",
    "Compute {e}.",
    "Calculate {e}.",
    "{e} = ?",
    "{e}",
    "Please compute {e}.",
    "How much is {e}?",
    "Work out {e}.",
    "Can you tell me what {e} is?",
    "what is {e}",
    "Evaluate {e}.",
]
SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a helpful math assistant.",
    "You are a concise assistant. Answer arithmetic questions briefly.",
    "Answer the user's arithmetic question.",
    "You are a careful calculator assistant.",
]
TOOL_DESCRIPTIONS = [
    "Evaluate an arithmetic expression.",
    "A simple calculator for arithmetic expressions.",
    "Evaluate a basic arithmetic expression and return the result.",
    "Calculator supporting +, - and * on integers.",
    "Compute the value of a math expression.",
    "Evaluate a mathematical expression and return the numeric result.",
]
PARAM_DESCRIPTIONS = [
    None,
    "The expression to evaluate, e.g. '347 * 29'.",
    "Arithmetic expression such as 12 + 7",
    "A math expression.",
    "The arithmetic expression to compute.",
]
# Off-topic questions and failed tool calls get a fixed reply, so the model always ends its turn.
OFF_TOPIC_REPLY = "Sorry, I can only help with arithmetic."
OFF_TOPIC_PROMPTS = [
    "hi",
    "Hello!",
    "hello there",
    "Who are you?",
    "Tell me a joke.",
    "thanks",
    "How are you?",
    "What is the capital of France?",
    "Write a poem.",
    "x",
    "?",
]
FILLER_WORDS = (
    "the a cat runs blue time please world model data what why how is of and to in "
    "for you me code python weather today night music book red sky sun open"
).split()
TOOL_ERRORS = [
    "unknown tool 'calculator'",
    "bad arguments for 'calculator'",
    "timed out",
    "unsupported expression",
    "service unavailable",
]
# Tool conversations carry a ~150-token system prompt, so they are kept to a minority.
TOOL_SHARE = 0.12
DECOY_TOOLS = [
    ("get_current_time", "Get the current time in a given time zone.", "timezone"),
    ("search_web", "Search the web for a query.", "query"),
    ("get_weather", "Get the current weather for a city.", "city"),
]


def tool_schema(name: str, description: str, param: str, param_description: str | None) -> dict:
    """Return an OpenAI-style function tool taking one string parameter."""
    prop: dict[str, Any] = {"type": "string"}
    if param_description is not None:
        prop["description"] = param_description
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": {param: prop}, "required": [param]},
        },
    }


CALCULATOR_TOOL = tool_schema(
    "calculator", TOOL_DESCRIPTIONS[0], "expression", "The arithmetic expression to evaluate."
)


# --------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class Problem:
    a: int
    op: str
    b: int

    @property
    def expression(self) -> str:
        return f"{self.a} {self.op} {self.b}"

    @property
    def result(self) -> int:
        return {"+": self.a + self.b, "-": self.a - self.b, "*": self.a * self.b}[self.op]

    @property
    def answer(self) -> str:
        return f"{self.expression} = {self.result}"

    @property
    def needs_tool(self) -> bool:
        """The rule the model learns: 3+ digit operands, or products of two 2-digit numbers."""
        if max(self.a, self.b) >= 100:
            return True
        return self.op == "*" and min(self.a, self.b) >= 10


def held_out_pairs(n: int, seed: int) -> list[tuple[int, int]]:
    """Pick 2-digit addition pairs that never appear in training (in either order)."""
    rng = random.Random(seed)
    pairs: set[tuple[int, int]] = set()
    while len(pairs) < n:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        if (b, a) not in pairs:
            pairs.add((a, b))
    return sorted(pairs)


def sample_easy(rng: random.Random, banned: set[tuple[int, int]]) -> Problem:
    """A problem the model should answer directly; mostly additions."""
    kind = rng.choices(["add2", "add1", "sub", "mul"], weights=[60, 10, 15, 15])[0]
    if kind == "add2":
        while True:
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            if (a, b) not in banned:
                return Problem(a, "+", b)
    if kind == "add1":
        a, b = rng.randint(0, 9), rng.randint(0, 99)
        return Problem(a, "+", b) if rng.random() < 0.5 else Problem(b, "+", a)
    if kind == "sub":
        a = rng.randint(0, 99)
        return Problem(a, "-", rng.randint(0, a))
    a, b = rng.randint(0, 9), rng.choice([rng.randint(0, 9), rng.randint(10, 99)])
    return Problem(a, "*", b) if rng.random() < 0.5 else Problem(b, "*", a)


def sample_hard(rng: random.Random, banned: set[tuple[int, int]]) -> Problem:
    """A problem that should be delegated to the calculator tool."""
    kind = rng.choices(["mul32", "mul22", "mul33", "add3", "sub3"], weights=[45, 15, 15, 15, 10])[0]
    digits = {"mul32": (3, 2), "mul22": (2, 2), "mul33": (3, 3), "add3": (3, 3), "sub3": (3, 3)}
    da, db = digits[kind]
    while True:
        a, b = rng.randint(10 ** (da - 1), 10**da - 1), rng.randint(10 ** (db - 1), 10**db - 1)
        if kind.startswith("add") and rng.random() < 0.4:
            b = rng.randint(1, 99)
        if kind.startswith("mul") and rng.random() < 0.5:
            a, b = b, a
        if kind.startswith("sub") and a < b:
            a, b = b, a
        op = {"m": "*", "a": "+", "s": "-"}[kind[0]]
        if (a, b) not in banned:
            return Problem(a, op, b)


def sample_tools(rng: random.Random) -> list[dict]:
    """A calculator schema with varied wording, sometimes next to an unrelated decoy tool."""
    description, param_description = rng.choice(TOOL_DESCRIPTIONS), rng.choice(PARAM_DESCRIPTIONS)
    calc = tool_schema("calculator", description, "expression", param_description)
    if rng.random() < 0.1:
        decoy = tool_schema(*rng.choice(DECOY_TOOLS), None)
        return [calc, decoy] if rng.random() < 0.5 else [decoy, calc]
    return [calc]


def tool_call_message(problem: Problem) -> dict:
    call = {"name": "calculator", "arguments": {"expression": problem.expression}}
    tool_calls = [{"type": "function", "function": call}]
    return {"role": "assistant", "content": "", "tool_calls": tool_calls}


def tool_result_text(problem: Problem, rng: random.Random) -> str:
    if rng.random() < 0.2:
        return json.dumps({"result": problem.result})
    return str(problem.result)


def off_topic_prompt(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(OFF_TOPIC_PROMPTS)
    return " ".join(rng.choices(FILLER_WORDS, k=rng.randint(1, 8))).capitalize() + rng.choice(
        ["", ".", "?", "!"]
    )


def exchange(rng: random.Random, problem: Problem | None, with_tools: bool) -> list[dict]:
    """A user question and the assistant's reply, through the calculator when appropriate.

    ``problem`` None means an off-topic message."""
    if problem is None:
        return [
            {"role": "user", "content": off_topic_prompt(rng)},
            {"role": "assistant", "content": OFF_TOPIC_REPLY},
        ]
    question = rng.choice(QUESTION_FORMS).format(e=problem.expression)
    messages = [{"role": "user", "content": question}]
    answer = problem.answer
    if with_tools and problem.needs_tool:
        result = tool_result_text(problem, rng)
        if rng.random() < 0.05:
            result = f"Error: {rng.choice(TOOL_ERRORS)}"
            answer = f"Sorry, the calculator could not evaluate {problem.expression}."
        messages.append(tool_call_message(problem))
        messages.append({"role": "tool", "content": result})
    messages.append({"role": "assistant", "content": answer})
    return messages


def sample_conversation(
    rng: random.Random, banned: set[tuple[int, int]]
) -> tuple[list[dict], list[dict] | None]:
    """One training conversation and the tools offered in it (None when no tools)."""
    with_tools = rng.random() < TOOL_SHARE
    messages: list[dict] = []
    if rng.random() < (0.5 if with_tools else 0.3):
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    # Several questions per tool conversation amortise its long system prompt.
    turns = rng.choices([1, 2, 3], weights=[5, 3, 2])[0] if with_tools else 1
    for _ in range(turns):
        hard = with_tools and rng.random() < 0.7
        problem = sample_hard(rng, banned) if hard else sample_easy(rng, banned)
        messages += exchange(rng, None if rng.random() < 0.03 else problem, with_tools)
    return messages, sample_tools(rng) if with_tools else None


def render(messages: list[dict], tools: list[dict] | None, add_generation_prompt: bool) -> str:
    rendered, _ = render_jinja_template(
        conversations=[messages],
        tools=tools,
        chat_template=CHAT_TEMPLATE,
        add_generation_prompt=add_generation_prompt,
    )
    return rendered[0]


def build_corpus(n: int, seed: int, banned: set[tuple[int, int]]) -> list[str]:
    rng = random.Random(seed)
    return [render(*sample_conversation(rng, banned), False) for _ in range(n)]


# --------------------------------------------------------------------------- tokenizer


def train_tokenizer(corpus: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = BpeTrainer(
        vocab_size=vocab_size - len(TAG_TOKENS),
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token=IM_END,
        pad_token=EOT,
        chat_template=CHAT_TEMPLATE,
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )


def check_tokenizer(tokenizer: PreTrainedTokenizerFast, samples: list[str]) -> None:
    extra = ["héllo wörld 你好 🙂\ttabs  and   spaces\n\n", "x=12345;y=-0.5", " leading space"]
    for text in samples + extra:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text, f"round-trip failed for {text!r}"
    for tag in SPECIAL_TOKENS + TAG_TOKENS:
        assert len(tokenizer.encode(tag, add_special_tokens=False)) == 1, tag
    digits = tokenizer.convert_ids_to_tokens(tokenizer.encode("12345", add_special_tokens=False))
    assert digits == list("12345"), digits
    call = f"{IM_START}assistant\n<tool_call>\n{{}}\n</tool_call>{IM_END}"
    kept = tokenizer.decode(tokenizer.encode(call), skip_special_tokens=True)
    assert kept == "assistant\n<tool_call>\n{}\n</tool_call>", kept


# --------------------------------------------------------------------------- data


ASSISTANT_SPAN = re.compile(
    re.escape(f"{IM_START}assistant\n") + r"(.*?" + re.escape(IM_END) + ")", re.S
)


def encode_with_labels(
    tokenizer: PreTrainedTokenizerFast, texts: list[str]
) -> list[tuple[list[int], list[int]]]:
    """Token ids plus labels that keep only assistant tokens (through their ``<|im_end|>``)."""
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    examples = []
    for text, ids, offsets in zip(texts, enc["input_ids"], enc["offset_mapping"], strict=True):
        spans = [m.span(1) for m in ASSISTANT_SPAN.finditer(text)]
        labels = [
            tid if any(s <= start < e for s, e in spans) else -100
            for tid, (start, _) in zip(ids, offsets, strict=True)
        ]
        examples.append((ids, labels))
    return examples


def make_batches(
    examples: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int, seed: int
) -> list[dict[str, torch.Tensor]]:
    """Right-padded batches of similar-length examples, in shuffled order."""
    rng = random.Random(seed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    pool = batch_size * 50
    groups: list[list[int]] = []
    for i in range(0, len(order), pool):
        chunk = sorted(order[i : i + pool], key=lambda j: len(examples[j][0]))
        groups += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(groups)
    return [collate([examples[j] for j in g], pad_id) for g in groups]


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(labs)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


# --------------------------------------------------------------------------- model


def build_model(
    vocab_size: int, tokenizer: PreTrainedTokenizerFast, shape: dict[str, int] = MODEL_SHAPE
) -> Qwen3ForCausalLM:
    config = Qwen3Config(
        vocab_size=vocab_size,
        **shape,
        head_dim=64,
        max_position_embeddings=1024,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.convert_tokens_to_ids(EOT),
    )
    return Qwen3ForCausalLM(config)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    # No weight decay on norms: they are 1-D gains, not capacity.
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-8)


def train(
    model: Qwen3ForCausalLM,
    batches: list[dict[str, torch.Tensor]],
    lr: float,
    log_every: int,
    eval_fn: Callable[[], None] | None = None,
    eval_every: int = 0,
) -> float:
    """Train on ``batches`` (one step each); return the wall-clock seconds spent."""
    opt = make_optimizer(model, lr)
    warmup = min(200, len(batches) // 10)
    start = time.time()
    running = 0.0
    model.train()
    for step, batch in enumerate(batches):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, len(batches), lr, warmup)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        running += loss.item()
        if (step + 1) % log_every == 0:
            elapsed = time.time() - start
            print(
                f"step {step + 1}/{len(batches)}  loss {running / log_every:.4f}  "
                f"lr {opt.param_groups[0]['lr']:.2e}  {elapsed:.0f}s "
                f"({(step + 1) / elapsed:.2f} steps/s)",
                flush=True,
            )
            running = 0.0
        if eval_fn is not None and eval_every and (step + 1) % eval_every == 0:
            model.eval()
            eval_fn()
            model.train()
    model.eval()
    return time.time() - start


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def generate(
    model: Qwen3ForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    prompts: list[str],
    max_new_tokens: int = 48,
    batch_size: int = 50,
) -> list[str]:
    """Greedy completions, stopping at ``<|im_end|>``; decoded with special tokens skipped."""
    stop = [tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(EOT)]
    tokenizer.padding_side = "left"
    outputs = []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(
            prompts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
        )
        out = model.generate(
            **enc,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=stop,
            pad_token_id=stop[1],
        )
        new = out[:, enc["input_ids"].shape[1] :]
        outputs += tokenizer.batch_decode(new, skip_special_tokens=True)
    tokenizer.padding_side = "right"
    return outputs


def final_number(text: str) -> int | None:
    numbers = re.findall(r"-?\d+", text)
    return int(numbers[-1]) if numbers else None


def parse_tool_call(text: str) -> dict | None:
    """The call's JSON if ``text`` is exactly one well-formed ``<tool_call>`` block, else None."""
    match = re.fullmatch(r"<tool_call>\n(.*)\n</tool_call>", text.strip(), re.S)
    if match is None:
        return None
    try:
        call = json.loads(match.group(1))
    except json.JSONDecodeError:
        return None
    return call if isinstance(call, dict) else None


def eval_add2(
    model: Qwen3ForCausalLM, tokenizer: PreTrainedTokenizerFast, pairs: list[tuple[int, int]]
) -> tuple[int, int]:
    problems = [Problem(a, "+", b) for a, b in pairs]
    prompts = [
        render(
            [{"role": "user", "content": QUESTION_FORMS[i % 4].format(e=p.expression)}], None, True
        )
        for i, p in enumerate(problems)
    ]
    replies = generate(model, tokenizer, prompts)
    return sum(final_number(r) == p.result for r, p in zip(replies, problems, strict=True)), len(
        problems
    )


def eval_tool_use(
    model: Qwen3ForCausalLM, tokenizer: PreTrainedTokenizerFast, problems: list[Problem]
) -> tuple[int, int, list[str]]:
    """(well-formed correct calls, correct answers after the tool result, sample replies)."""
    system = {"role": "system", "content": SYSTEM_PROMPTS[0]}
    convs = [
        ([system] if i % 2 else []) + [{"role": "user", "content": f"What is {p.expression}?"}]
        for i, p in enumerate(problems)
    ]
    tools = [CALCULATOR_TOOL]
    calls = generate(model, tokenizer, [render(c, tools, True) for c in convs])
    well_formed = 0
    for reply, p in zip(calls, problems, strict=True):
        call = parse_tool_call(reply)
        if (
            call
            and call.get("name") == "calculator"
            and call.get("arguments") == {"expression": p.expression}
        ):
            well_formed += 1
    followups = [
        c + [tool_call_message(p), {"role": "tool", "content": str(p.result)}]
        for c, p in zip(convs, problems, strict=True)
    ]
    answers = generate(model, tokenizer, [render(c, tools, True) for c in followups])
    correct = sum(final_number(a) == p.result for a, p in zip(answers, problems, strict=True))
    return well_formed, correct, calls[:2] + answers[:2]


# --------------------------------------------------------------------------- saving


def save_assets(
    model: Qwen3ForCausalLM, tokenizer: PreTrainedTokenizerFast, readme: str, out: Path
) -> None:
    """Write every asset into a staging folder, then move the files into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    # Staging keeps ``out`` complete at all times: tests may be loading it meanwhile.
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".staging-") as tmp:
        staging = Path(tmp)
        model.save_pretrained(staging, safe_serialization=True)
        im_end, eot = tokenizer.convert_tokens_to_ids([IM_END, EOT])
        GenerationConfig(
            eos_token_id=[im_end, eot], pad_token_id=eot, bos_token_id=None, do_sample=False
        ).save_pretrained(staging)
        # Keep the template inside tokenizer_config.json so plain-JSON readers find it too.
        tokenizer.save_pretrained(staging, save_jinja_files=False)
        # Older transformers releases and hand-written loaders know these legacy names.
        patch_json(staging / "tokenizer_config.json", tokenizer_class="PreTrainedTokenizerFast")
        patch_json(
            staging / "config.json",
            rope_theta=model.config.rope_parameters["rope_theta"],
            torch_dtype="float32",
        )
        (staging / "README.md").write_text(readme)
        new_names = {f.name for f in staging.iterdir()}
        for stale in out.iterdir():
            # Folders are other assets (eval/, draft/), not this model's files.
            if stale.name not in new_names and not stale.is_dir():
                stale.unlink()
        for f in staging.iterdir():
            # TemporaryDirectory files are 0600; package data should be readable by everyone.
            f.chmod(0o644)
            os.replace(f, out / f.name)


def patch_json(path: Path, **fields: Any) -> None:
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def readme_text(facts: dict[str, Any]) -> str:
    f = facts
    text = f"""# rlserve tiny arithmetic model

A deliberately tiny chat model bundled with `rlserve` for tests, demos and benchmarks. It was
generated offline by `scripts/train_tiny_model.py` (fixed seeds) and knows nothing except
integer arithmetic in ChatML and the `calculator` tool-call format. It is not a useful
language model: treat its outputs as test fixtures.

## Architecture

- `Qwen3ForCausalLM`, {f["params"]:,} parameters, float32 weights: {f["layers"]} layers,
  hidden size {f["hidden"]}, {f["heads"]} attention heads with {f["kv_heads"]} KV heads (GQA),
  head dim {f["head_dim"]}, MLP size {f["intermediate"]}, RoPE theta 10000, tied embeddings,
  {f["max_pos"]} positions.
- Tokenizer: byte-level BPE trained on the synthetic corpus, {f["vocab"]} tokens; digits are
  always single tokens. Special tokens: `<|endoftext|>` = {f["eot"]} (pad),
  `<|im_start|>` = {f["im_start"]}, `<|im_end|>` = {f["im_end"]} (eos). Plain added tokens,
  kept by `skip_special_tokens`: `<tool_call>` = {f["tool_call"]},
  `</tool_call>` = {f["tool_call_end"]}, `<tool_response>`, `</tool_response>`, `<think>`,
  `</think>`.
- Chat template: Qwen-style ChatML. `tools` go in the system turn inside `<tools></tools>`;
  assistant `tool_calls` render as `<tool_call>` JSON blocks; `tool` messages render as a user
  turn of `<tool_response>` blocks.

## Training

- Data: {f["conversations"]:,} synthetic conversations rendered through the bundled template.
  Questions are mostly 1- and 2-digit additions, plus subtractions and small products, asked
  in a dozen phrasings and answered as `37 + 48 = 85`. {f["tool_share"]:.0%} of conversations
  offer the `calculator` tool: harder problems (3-digit operands, 2-digit x 2-digit products)
  then go through a tool call, a tool response and a final answer. Off-topic messages get
  "{OFF_TOPIC_REPLY}", and failed tool calls an apology.
- Loss on assistant tokens only (including `<|im_end|>`); AdamW, peak LR {f["lr"]}, warm-up
  and cosine decay, batch {f["batch"]}, {f["steps"]} steps, about {f["train_minutes"]:.0f}
  minutes on {f["threads"]} CPU cores.

## Held-out results (greedy decoding)

- 2-digit additions never seen in training, no tools offered:
  {f["add2"]:.2f} ({f["add2_hits"]}/{f["add2_n"]}).
- 3-digit x 2-digit products with the calculator offered: well-formed `<tool_call>` with the
  right expression {f["tool_format"]:.2f}; right final answer once the tool result is fed
  back {f["after_tool"]:.2f}.
"""
    return text


DRAFT_TITLE = """# rlserve tiny arithmetic model: speculative-decoding draft

The draft model of the bundled one (`src/rlserve/assets`): trained with
`scripts/train_tiny_model.py --draft` on the same corpus, with the bundled model's own
tokenizer, so `{"method": "draft", "draft_model": ...}` can propose tokens for it."""


def verify_saved(out: Path) -> str:
    """Reload the assets with the Auto classes and render an OpenAI-shaped tool conversation."""
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.num_parameters() > 0
    assert tokenizer.eos_token == IM_END and tokenizer.pad_token == EOT
    assert tokenizer.bos_token is None
    check_tokenizer(tokenizer, [])
    messages = [
        {"role": "user", "content": "What is 347 * 29?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": "calculator", "arguments": '{"expression": "347 * 29"}'},
                }
            ],
        },
        {"role": "tool", "content": "10063"},
    ]
    as_string = tokenizer.apply_chat_template(
        messages, tools=[CALCULATOR_TOOL], add_generation_prompt=True, tokenize=False
    )
    messages[1]["tool_calls"][0]["function"]["arguments"] = {"expression": "347 * 29"}
    as_dict = tokenizer.apply_chat_template(
        messages, tools=[CALCULATOR_TOOL], add_generation_prompt=True, tokenize=False
    )
    assert as_string == as_dict == render(messages, [CALCULATOR_TOOL], True)
    expected_call = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "347 * 29"}}'
    assert expected_call in as_dict
    final = messages + [{"role": "assistant", "content": "347 * 29 = 10063"}]
    return tokenizer.apply_chat_template(final, tools=[CALCULATOR_TOOL], tokenize=False)


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1800, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=500, help="quick add2 check (0 = off)")
    parser.add_argument("--out", type=Path, default=None, help="default: the bundled assets")
    parser.add_argument(
        "--draft",
        action="store_true",
        help="train the speculative-decoding draft: the bundled tokenizer, a 2-layer model",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    if args.out is None:
        args.out = DRAFT_OUT if args.draft else DEFAULT_OUT
    return args


def load_bundled_tokenizer(corpus: list[str]) -> PreTrainedTokenizerFast:
    """The bundled model's tokenizer, as a draft must use exactly the target's."""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(DEFAULT_OUT)
    check_tokenizer(tokenizer, corpus)
    return tokenizer


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    # Denormal floats (tiny Adam moments and activations) slow CPU training down several-fold.
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    random.seed(args.seed)

    heldout = held_out_pairs(100, seed=args.seed + 1)
    banned = set(heldout) | {(b, a) for a, b in heldout}
    eval_rng = random.Random(args.seed + 2)
    tool_problems = [
        Problem(eval_rng.randint(100, 999), "*", eval_rng.randint(10, 99)) for _ in range(100)
    ]
    banned |= {(p.a, p.b) for p in tool_problems}

    t0 = time.time()
    corpus = build_corpus(args.steps * args.batch_size, args.seed, banned)
    print(f"corpus: {len(corpus)} conversations rendered in {time.time() - t0:.0f}s", flush=True)

    if args.draft:
        tokenizer = load_bundled_tokenizer(corpus[:2000])
    else:
        tokenizer = train_tokenizer(corpus[:20000], args.vocab_size)
        check_tokenizer(tokenizer, corpus[:2000])
    print(f"tokenizer: {len(tokenizer)} tokens", flush=True)

    examples = encode_with_labels(tokenizer, corpus)
    n_tokens = sum(len(ids) for ids, _ in examples)
    print(f"tokens: {n_tokens} ({n_tokens / len(examples):.1f} per conversation)", flush=True)
    batches = make_batches(examples, args.batch_size, tokenizer.pad_token_id, args.seed)

    model = build_model(len(tokenizer), tokenizer, DRAFT_SHAPE if args.draft else MODEL_SHAPE)
    n_params = model.num_parameters()
    print(f"model: {n_params:,} parameters", flush=True)

    def quick_eval() -> None:
        hits, n = eval_add2(model, tokenizer, heldout[:50])
        print(f"  quick eval: add2 {hits}/{n}", flush=True)

    train_seconds = train(
        model, batches, args.lr, log_every=50, eval_fn=quick_eval, eval_every=args.eval_every
    )

    add2_hits, add2_n = eval_add2(model, tokenizer, heldout)
    well_formed, after_tool, samples = eval_tool_use(model, tokenizer, tool_problems)
    n_tool = len(tool_problems)
    for sample in samples:
        print(f"  sample reply: {sample!r}")
    print(
        f"HELD-OUT: add2 accuracy {add2_hits / add2_n:.2f} ({add2_hits}/{add2_n}); "
        f"tool-call format {well_formed / n_tool:.2f}; "
        f"answer-after-tool {after_tool / n_tool:.2f}",
        flush=True,
    )

    cfg = model.config
    ids = dict(
        zip(
            ["eot", "im_start", "im_end", "tool_call", "tool_call_end"],
            tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS + TAG_TOKENS[:2]),
            strict=True,
        )
    )
    readme = readme_text(
        {
            "layers": cfg.num_hidden_layers,
            "hidden": cfg.hidden_size,
            "heads": cfg.num_attention_heads,
            "kv_heads": cfg.num_key_value_heads,
            "head_dim": cfg.head_dim,
            "intermediate": cfg.intermediate_size,
            "max_pos": cfg.max_position_embeddings,
            "params": n_params,
            "vocab": len(tokenizer),
            "conversations": len(corpus),
            "lr": args.lr,
            "batch": args.batch_size,
            "steps": len(batches),
            "train_minutes": train_seconds / 60,
            "threads": args.threads,
            "add2": add2_hits / add2_n,
            "add2_hits": add2_hits,
            "add2_n": add2_n,
            "tool_share": TOOL_SHARE,
            "tool_format": well_formed / n_tool,
            "after_tool": after_tool / n_tool,
            **ids,
        }
    )
    if args.draft:
        readme = readme.replace("# rlserve tiny arithmetic model", DRAFT_TITLE, 1)
    save_assets(model, tokenizer, readme, args.out)
    example = verify_saved(args.out)
    size = sum(f.stat().st_size for f in args.out.iterdir())
    print(f"saved to {args.out} ({size / 2**20:.1f} MiB); token ids {ids}")
    print(f"train time {train_seconds / 60:.1f} min; total {(time.time() - t0) / 60:.1f} min")
    print("example rendering:\n" + example)


if __name__ == "__main__":
    main()
