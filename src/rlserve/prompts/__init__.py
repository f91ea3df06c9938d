"""prompts (a torch-free leaf, see docs/ARCHITECTURE.md): named prompt templates for
evaluation and rollouts. `get_prompt("generic/math").messages({"problem": q})` gives the
chat messages; `.fill(...)` the plain text; `.render(values, tokenizer)` the text through
the tokenizer's chat template when it has one."""

from rlserve.prompts.registry import get_prompt, prompt_names
from rlserve.prompts.template import PromptTemplate

__all__ = ["PromptTemplate", "get_prompt", "prompt_names"]
