"""Seed 001's PPO and GRPO training loops, as the seed writes them, on the bundled model
with the Hugging Face backend: a few steps, and the loss goes down.

Adapted minimally: short responses (max_new_tokens 8, not 128; GRPO groups of 4, not 8),
PPO samples with a seed (so each step's responses change only as the policy does), the
seed's task-specific helpers (`dataloader`,
`compute_rewards`, `compute_advantages`, `rank_normalize`, the optimizer) are written here,
and advantages get a trailing axis to broadcast over the [B, T] logprobs. Deterministic:
sampling draws from torch's global generator, seeded first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlserve import InferenceModule

PROMPTS = ["The future of AI is", "Explain ML"]  # raw text, as in the seed


def compute_rewards(prompts: list[str], texts: list[str]) -> torch.Tensor:
    """A toy task: shorter responses are better (1 for an empty one, 0 at 200 characters)."""
    del prompts
    return torch.tensor([max(0.0, 1.0 - len(t) / 200) for t in texts])


def test_seed001_ppo_loop_lowers_the_loss() -> None:
    torch.manual_seed(0)
    dataloader = [{"prompts": PROMPTS}] * 3

    def compute_advantages(rewards: torch.Tensor) -> torch.Tensor:
        return rewards[:, None]  # [B, 1]: broadcasts over the response tokens

    # --- the seed's loop -------------------------------------------------------------
    policy = InferenceModule(backend="huggingface")
    reference = InferenceModule(backend="huggingface")
    # Freeze reference model
    reference.backend.model.requires_grad_(False)
    optimizer = torch.optim.Adam(policy.backend.model.parameters(), lr=1e-4)
    losses = []

    for batch in dataloader:
        # Generate responses
        result = policy.generate(batch["prompts"], max_new_tokens=8, temperature=0.8, seed=1234)

        # Compute rewards (task-specific)
        rewards = compute_rewards(batch["prompts"], result.texts)

        # Get log probabilities
        logprobs = policy.get_logprobs(batch["prompts"], result.texts)

        # Compute KL penalty
        policy_logits = policy.get_logits(batch["prompts"], result.texts)
        ref_logits = reference.get_logits(batch["prompts"], result.texts)
        kl_div = F.kl_div(
            F.log_softmax(policy_logits, dim=-1),
            F.softmax(ref_logits, dim=-1),
            reduction="batchmean",
        )

        # Compute loss
        advantages = compute_advantages(rewards)
        policy_loss = -(logprobs * advantages).mean()
        total_loss = policy_loss + 0.1 * kl_div

        # Update
        total_loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(total_loss.item())
    # -----------------------------------------------------------------------------------

    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert losses[-1] < 0.9 * losses[0], losses
    assert not any(p.grad is not None for p in reference.backend.model.parameters())
    policy.close()
    reference.close()


def test_seed001_grpo_loop_lowers_the_loss() -> None:
    torch.manual_seed(0)
    dataloader = [{"prompts": PROMPTS[:1]}] * 3

    def compute_rewards_batch(results: list) -> torch.Tensor:
        """[prompts, samples] rewards."""
        return torch.stack([compute_rewards(batch["prompts"], r.texts) for r in results])

    def rank_normalize(rewards: torch.Tensor) -> torch.Tensor:
        """Ranks within each group scaled to [-1, 1] (ties broken by position)."""
        ranks = rewards.argsort(dim=-1, stable=True).argsort(dim=-1).float()
        half = (rewards.shape[-1] - 1) / 2
        return (ranks - half) / half

    policy = InferenceModule(backend="huggingface")
    optimizer = torch.optim.Adam(policy.backend.model.parameters(), lr=3e-3)
    losses = []

    # --- the seed's loop -------------------------------------------------------------
    # GRPO doesn't need value function, just relative rewards
    for batch in dataloader:
        # Generate multiple responses per prompt
        results = []
        for prompt in batch["prompts"]:
            result = policy.generate(
                [prompt] * 4,  # 4 samples per prompt (the seed: 8)
                max_new_tokens=8,
                temperature=0.8,
            )
            results.append(result)

        # Compute relative rewards (rank-based)
        all_rewards = compute_rewards_batch(results)
        relative_rewards = rank_normalize(all_rewards)

        # Update on better-than-average samples
        step_loss = 0.0
        for prompt, responses, rel_rewards in zip(
            batch["prompts"], results, relative_rewards, strict=True
        ):
            # Filter good samples
            good_mask = rel_rewards > 0
            good_responses = [r for r, m in zip(responses, good_mask, strict=True) if m]
            good_rewards = rel_rewards[good_mask]

            # Compute loss
            logprobs = policy.get_logprobs([prompt] * len(good_responses), good_responses)
            loss = -(logprobs * good_rewards[:, None]).mean()

            loss.backward()
            step_loss += loss.item()

        optimizer.step()
        optimizer.zero_grad()
        losses.append(step_loss)
    # -----------------------------------------------------------------------------------

    assert losses[-1] < 0.5 * losses[0], losses
    policy.close()
