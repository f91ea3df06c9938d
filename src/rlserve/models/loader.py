"""Build a model from a Hugging Face checkpoint folder and load its safetensors weights.

`load_weights` is the single path by which tensors enter the model, for the first load
and (later) for weight updates: it maps Hugging Face names onto our (possibly fused)
parameters and checks every name and shape.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig

from rlserve.models.config import ModelConfig
from rlserve.models.llama import LlamaModel, RotaryEmbedding

# Buffers some checkpoints carry that are recomputed here.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

# A state dict, an iterable of (Hugging Face name, tensor) pairs, or a safetensors file/folder.
WeightSource = Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]] | str | Path


def read_config(path: str | Path, trust_remote_code: bool = False) -> tuple[ModelConfig, object]:
    hf_config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    return ModelConfig.from_hf(hf_config), hf_config


def load_model(
    path: str | Path,
    dtype: torch.dtype,
    device: torch.device,
    max_positions: int,
    trust_remote_code: bool = False,
) -> LlamaModel:
    """Build the model for `path` and fill it from its *.safetensors files.
    `trust_remote_code` lets a config.json whose class lives in the checkpoint load."""
    config, _ = read_config(path, trust_remote_code)
    with torch.device("meta"):
        model = LlamaModel(config, max_positions)
    # Built on "meta" so no time goes into random init; the rope tables are not weights
    # and must be recomputed for real after to_empty.
    model = model.to_empty(device=device).to(dtype)
    model.rope = RotaryEmbedding(config, max_positions).to(device)
    model.requires_grad_(False)
    loaded = load_weights(model, iter_safetensors(path))
    missing = sorted(set(model.hf_weight_targets()) - loaded)
    if missing:
        raise ValueError(
            f"checkpoint {path} is missing weights: {', '.join(missing[:5])}"
            + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
        )
    return model.eval()


def safetensors_files(path: str | Path) -> list[Path]:
    path = Path(path)
    if path.is_file():
        return [path]
    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / shard for shard in shards]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {path}")
    return files


def iter_safetensors(path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    for file in safetensors_files(path):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


@torch.no_grad()
def load_weights(model: LlamaModel, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
    """Copy Hugging Face-named tensors into the model; returns the names loaded."""
    targets = model.hf_weight_targets()
    loaded: set[str] = set()
    for name, tensor in weights:
        target = resolve_target(model, targets, name)
        if target is None:
            continue
        if tuple(tensor.shape) != tuple(target.shape):
            raise ValueError(
                f"weight {name} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(target.shape)}"
            )
        target.copy_(tensor)
        loaded.add(name)
    return loaded


def resolve_target(
    model: LlamaModel, targets: dict[str, torch.Tensor], name: str
) -> torch.Tensor | None:
    """The tensor `name` fills; None for names that are skipped; ValueError if unknown."""
    if name in targets:
        return targets[name]
    if name.endswith(_IGNORED_SUFFIXES):
        return None
    if name == "lm_head.weight" and model.lm_head is None:
        return None  # tied head: the embedding is the head
    raise ValueError(f"unknown weight name {name!r} for {model.config.architecture}")


WeightItems = list[tuple[str, torch.Tensor]]


def read_safetensors(path: str | Path) -> WeightItems:
    """Every (name, tensor) of the safetensors file or folder `path`; ValueError naming it."""
    if not Path(path).exists():
        raise ValueError(f"weights path {str(path)!r} does not exist")
    try:
        return list(iter_safetensors(path))
    except Exception as exc:  # a truncated, foreign or missing file
        detail = str(exc) or type(exc).__name__
        raise ValueError(f"cannot read safetensors from {str(path)!r}: {detail}") from exc


def check_weights(model: LlamaModel, items: Iterable[tuple[str, object]]) -> WeightItems:
    """The (name, tensor) pairs of `items` that `model` takes; ValueError for a value that
    is not a tensor, an unknown name, a wrong shape or dtype, or nothing to load. Writes
    nothing, and reads only names, shapes and dtypes (fixed while a model serves), so a
    server may run it off the engine thread before it pauses anything."""
    targets = model.hf_weight_targets()
    checked: WeightItems = []
    for name, tensor in items:
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"weight {name} is a {type(tensor).__name__}, not a tensor")
        target = resolve_target(model, targets, name)
        if target is None:
            continue
        if tensor.dtype != target.dtype:
            raise ValueError(
                f"weight {name} has dtype {tensor.dtype}, the model uses {target.dtype}"
            )
        if tuple(tensor.shape) != tuple(target.shape):
            raise ValueError(
                f"weight {name} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(target.shape)}"
            )
        checked.append((name, tensor))
    if not checked:
        raise ValueError("the update holds no weights of this model")
    return checked


@torch.no_grad()
def update_weights(model: LlamaModel, source: WeightSource) -> list[str]:
    """Transactionally replace weights: every name, shape and dtype is checked before
    anything is written, so on any error the model is unchanged. Returns the names."""
    if isinstance(source, (str, Path)):
        items: Iterable[tuple[str, object]] = read_safetensors(source)
    elif isinstance(source, Mapping):
        items = source.items()
    else:
        items = source
    return sorted(load_weights(model, check_weights(model, items)))


DtypeCasts = set[tuple[torch.dtype, torch.dtype]]  # (checkpoint dtype, model dtype) pairs


def cast_floating(
    model: LlamaModel, items: Iterable[tuple[str, object]]
) -> tuple[WeightItems, DtypeCasts]:
    """`items` with each floating tensor cast to the dtype of the parameter it fills (a bf16
    checkpoint for an fp32 model, as vLLM and SGLang load it), and the casts made.
    Anything else passes unchanged, for `check_weights` to judge."""
    targets = model.hf_weight_targets()
    cast: DtypeCasts = set()
    out: WeightItems = []
    for name, tensor in items:
        target = targets.get(name)
        if (
            isinstance(tensor, torch.Tensor)
            and target is not None
            and tensor.dtype != target.dtype
            and tensor.is_floating_point()
            and target.is_floating_point()
        ):
            cast.add((tensor.dtype, target.dtype))
            tensor = tensor.to(target.dtype)
        out.append((name, tensor))  # type: ignore[arg-type]
    return out, cast
