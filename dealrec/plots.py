"""A picture of a selection: where the scores lie, where the strata are, what each stratum gave."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dealrec_core.data import atomic_file
from dealrec.methods import REGISTRY


def plot_selection(result, path: str | Path) -> None:
    """Write ``path`` (PNG): score histogram (kept, hard-pruned, selected) over the strata,
    and the number of samples each stratum holds and gave to the coreset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tbl = result.scores
    score = tbl.column("score").to_numpy()
    stratum = tbl.column("stratum").to_numpy()
    selected = tbl.column("selected").to_numpy(zero_copy_only=False)
    s = result.summary
    strata = result.strata

    two_panels = strata is not None
    fig, axes = plt.subplots(2 if two_panels else 1, 1, figsize=(10, 7 if two_panels else 4), squeeze=False)
    ax = axes[0, 0]
    bins = np.linspace(score.min(), score.max(), 101) if score.max() > score.min() else 10
    pruned = stratum == -1
    if pruned.any():
        ax.hist([score[~pruned], score[pruned]], bins=bins, stacked=True, color=["#9ecae1", "#fc9272"],
                label=[f"pool ({int((~pruned).sum())})", f"hard-pruned ({int(pruned.sum())})"])
    else:
        ax.hist(score, bins=bins, color="#9ecae1", label=f"pool ({len(score)})")
    ax.hist(score[selected], bins=bins, histtype="step", color="#08306b", linewidth=1.5,
            label=f"selected ({int(selected.sum())})")
    if two_panels:
        for e in strata.edges:
            ax.axvline(e, color="grey", linewidth=0.4, alpha=0.6)
    ax.set_yscale("log")
    ax.set_xlabel("score")
    ax.set_ylabel("samples")
    params = f"method {s['method']}, n {s['n']}, seed {s['seed']}"
    if REGISTRY[s["method"]].uses_lambda:
        params += f", lambda {s['lambda']}"
    if two_panels:
        params += f", k {s['k']}, hard prune {s['hard_prune']}"
    ax.set_title(params)
    ax.legend(loc="upper right", fontsize=8)

    if two_panels:
        ax = axes[1, 0]
        idx = np.arange(len(strata.counts))
        ax.bar(idx, strata.counts, color="#9ecae1", label="samples in stratum")
        ax.bar(idx, strata.budgets, color="#08306b", label="selected from stratum")
        ax.set_yscale("symlog")
        ax.set_xlabel("stratum (equal-width score bins, low to high)")
        ax.set_ylabel("samples")
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    try:
        with atomic_file(path, suffix=".png") as tmp:   # matplotlib picks the format by the suffix
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
