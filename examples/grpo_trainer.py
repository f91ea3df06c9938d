"""The GRPO example's trainer: a clipped policy-gradient update in plain PyTorch.

The trainable policy is `transformers`' Qwen3ForCausalLM loaded from the engine's own
checkpoint, not rlserve's model module: a trainer is a separate code base from the
inference engine in every real RL stack (FSDP / Megatron beside vLLM / SGLang), so the
train/rollout logprob mismatch logged here measures two independent implementations
agreeing, which is the fidelity that matters. rlserve's model runs a paged, packed
inference forward; transformers' runs a padded batch with autograd, which is what training
needs.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from grpo_rollout import Rollout
from transformers import AutoModelForCausalLM


@dataclass
class TrainConfig:
    """Optimiser and loss settings, checked once."""

    lr: float = 1e-4
    clip_eps: float = 0.2  # PPO's clip range of the probability ratio
    kl_coef: float = 0.0  # weight of the k3 KL-to-start penalty in the loss (0: logged only)
    minibatches: int = 1  # optimiser steps per batch (above 1 the later ones are off-policy)
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        for name in ("lr", "clip_eps", "max_grad_norm"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not isinstance(self.kl_coef, (int, float)) or not 0 <= self.kl_coef < math.inf:
            raise ValueError(f"kl_coef must be a number >= 0, got {self.kl_coef!r}")
        if isinstance(self.minibatches, bool) or not isinstance(self.minibatches, int):
            raise ValueError(f"minibatches must be an integer >= 1, got {self.minibatches!r}")
        if self.minibatches < 1:
            raise ValueError(f"minibatches must be an integer >= 1, got {self.minibatches!r}")


@dataclass
class Batch:
    """Rollouts as padded tensors: `tokens` [B, L]; the other per-token tensors [B, L-1]
    are aligned with the targets tokens[:, 1:] and are 0 outside completions."""

    tokens: torch.Tensor
    attention: torch.Tensor
    mask: torch.Tensor  # 1.0 on sampled (completion) tokens
    rollout_logprobs: torch.Tensor
    versions: torch.Tensor  # weight version of each sampled token
    advantages: torch.Tensor  # the sequence's advantage on each of its tokens


def to_batch(rollouts: list[Rollout], advantages: list[float], pad_id: int) -> Batch:
    width = max(len(r.prompt_ids) + len(r.completion_ids) for r in rollouts)
    shape = (len(rollouts), width)
    tokens = torch.full(shape, pad_id, dtype=torch.long)
    attention = torch.zeros(shape, dtype=torch.long)
    per_token = {k: torch.zeros(len(rollouts), width - 1) for k in ("mask", "lp", "adv")}
    versions = torch.zeros(len(rollouts), width - 1, dtype=torch.long)
    for i, (r, adv) in enumerate(zip(rollouts, advantages, strict=True)):
        ids = r.prompt_ids + r.completion_ids
        tokens[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        span = slice(len(r.prompt_ids) - 1, len(ids) - 1)  # position t predicts token t + 1
        per_token["mask"][i, span] = 1.0
        per_token["lp"][i, span] = torch.tensor(r.logprobs)
        per_token["adv"][i, span] = adv
        versions[i, span] = torch.tensor(r.weight_versions)
    return Batch(tokens, attention, per_token["mask"], per_token["lp"], versions, per_token["adv"])


def token_logprobs(
    model: torch.nn.Module, batch: Batch, rows: slice | torch.Tensor
) -> torch.Tensor:
    """log p(token t+1 | tokens <= t) under `model` for `rows` of the batch, fp32."""
    tokens, attention = batch.tokens[rows], batch.attention[rows]
    logits = model(input_ids=tokens, attention_mask=attention).logits[:, :-1].float()
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, 1:, None]).squeeze(-1)


def group_advantages(rewards: list[float], group_size: int) -> list[float]:
    """(r - group mean) / (group std + 1e-4): GRPO's advantage. A group whose samples all
    got the same reward teaches nothing and gets 0."""
    out: list[float] = []
    for start in range(0, len(rewards), group_size):
        group = torch.tensor(rewards[start : start + group_size])
        centred = group - group.mean()
        out += (centred / (group.std(unbiased=False) + 1e-4)).tolist()
    return out


class Trainer:
    """The trainable policy, its frozen start (for the KL) and the weights one version
    back (to check rollout logprobs of tokens an async rollout sampled before an update)."""

    def __init__(self, model_path: str, config: TrainConfig, version: int, seed: int) -> None:
        torch.manual_seed(seed)
        self.config = config
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        self.reference = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.previous = copy.deepcopy(self.reference)
        self.version = version  # the version of `self.model`'s weights
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=0.0)
        self._shuffle = torch.Generator().manual_seed(seed)

    def weights(self) -> dict[str, torch.Tensor]:
        """The current weights under their Hugging Face names (what update_weights takes)."""
        return {name: t.detach() for name, t in self.model.state_dict().items()}

    @torch.no_grad()
    def measure(self, batch: Batch) -> dict[str, float]:
        """Before the update: mismatch of the rollout logprobs against this trainer's own
        (under the weights version that sampled each token), and KL to the start policy."""
        self.model.eval()
        current = token_logprobs(self.model, batch, slice(None))
        behind = batch.versions == self.version - 1
        trainer = current
        if bool((behind & (batch.mask > 0)).any()):
            trainer = torch.where(
                behind, token_logprobs(self.previous, batch, slice(None)), current
            )
        sampled = batch.mask > 0
        gap = (trainer - batch.rollout_logprobs).abs()[sampled]
        log_ratio = token_logprobs(self.reference, batch, slice(None)) - current
        kl = (log_ratio.exp() - log_ratio - 1)[sampled]  # k3, an unbiased KL(policy || start)
        return {
            "mismatch_max": gap.max().item(),
            "mismatch_mean": gap.mean().item(),
            "kl_to_start": kl.mean().item(),
        }

    def update(self, batch: Batch) -> dict[str, float]:
        """`minibatches` clipped policy-gradient steps over a shuffled batch; the weights
        version moves on by one."""
        self.previous.load_state_dict(self.model.state_dict())
        self.model.train()
        order = torch.randperm(batch.tokens.shape[0], generator=self._shuffle)
        losses, clipped = [], []
        for rows in order.chunk(self.config.minibatches):
            loss, clip_fraction = self._loss(batch, rows)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
            self.optimizer.step()
            losses.append(loss.item())
            clipped.append(clip_fraction)
        self.version += 1
        return {"loss": sum(losses) / len(losses), "clip_fraction": sum(clipped) / len(clipped)}

    def _loss(self, batch: Batch, rows: torch.Tensor) -> tuple[torch.Tensor, float]:
        c = self.config
        mask, adv = batch.mask[rows], batch.advantages[rows]
        logprobs = token_logprobs(self.model, batch, rows)
        # The ratio to the policy that sampled: off-policy tokens (async) are corrected too.
        ratio = (logprobs - batch.rollout_logprobs[rows]).exp()
        surrogate = torch.min(ratio * adv, ratio.clamp(1 - c.clip_eps, 1 + c.clip_eps) * adv)
        per_token = -surrogate
        if c.kl_coef > 0:
            with torch.no_grad():
                reference = token_logprobs(self.reference, batch, rows)
            log_ratio = reference - logprobs
            per_token = per_token + c.kl_coef * (log_ratio.exp() - log_ratio - 1)
        tokens = mask.sum().clamp(min=1)
        was_clipped = ((ratio - 1).abs() > c.clip_eps).float()
        return (per_token * mask).sum() / tokens, ((was_clipped * mask).sum() / tokens).item()
