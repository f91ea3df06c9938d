"""Per-token weight versions as spans: SGLang's `meta_info.weight_versions`.

SGLang (`sglang/srt/utils/weight_versions.py`, `add_weight_versions_to_meta_info`) reports
which weights produced which output tokens as `[{"version", "start", "end"}]`: runs of
tokens `[start, end)` produced by one weight-version label, in order; a reply without
output tokens has one empty span of the current label. vLLM has no such field (its RFC
vllm-project/vllm#54443 notes only SGLang exposes spans); rlserve's own per-token list
stays what it is (`weight_versions`: one integer policy version per token).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def version_spans(
    versions: list[int],
    label: Callable[[int], Any] = lambda version: version,
    current: Any = None,
) -> list[dict[str, Any]]:
    """Spans of equal labels over per-token `versions` (`label(version)`: what a span
    names, e.g. SGLang's string label); no tokens: one empty span of `current`."""
    if not versions:
        return [{"version": current, "start": 0, "end": 0}]
    spans: list[dict[str, Any]] = []
    start = 0
    for end in range(1, len(versions) + 1):
        if end < len(versions) and versions[end] == versions[start]:
            continue
        name = label(versions[start])
        if spans and spans[-1]["version"] == name:
            spans[-1]["end"] = end
        else:
            spans.append({"version": name, "start": start, "end": end})
        start = end
    return spans
