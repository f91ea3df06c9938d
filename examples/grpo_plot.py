"""The GRPO example's reward curve: mean reward and held-out accuracy per step (a PNG)."""

from __future__ import annotations

from pathlib import Path


def save_reward_curve(history: list[dict], path: Path, title: str) -> bool:
    """Write the curve to `path`; False (with a message saying what to install) when
    matplotlib is missing: the run itself does not need it."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # a file, never a window
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no reward curve (pip install matplotlib)")
        return False
    steps = [row["step"] for row in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [row["reward_mean"] for row in history], label="mean reward (T = 1)")
    evals = [(r["step"], r.get("heldout_accuracy")) for r in history]
    evals = [(step, acc) for step, acc in evals if acc is not None]
    if history and "heldout_accuracy_after" in history[-1]:  # after the last update
        evals.append((history[-1]["step"] + 1, history[-1]["heldout_accuracy_after"]))
    ax.plot(
        [step for step, _ in evals],
        [acc for _, acc in evals],
        marker="o",
        markersize=3,
        label="held-out accuracy (greedy)",
    )
    ax.set_xlabel("step")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
