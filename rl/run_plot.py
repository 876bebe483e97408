"""Training curves of a run as one PNG: reward, accuracy (with validation accuracy), KL, entropy and
gradient norm against the optimizer step, with the stage boundaries marked (`envtune plot RUN_DIR`).

Needs matplotlib (the `plot` extra); it is imported only here, with the Agg back-end (no display).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from envtune_jax.rl.run_summary import load_step_metrics

# (panel title, [(metrics key, legend label)])
PANELS = (
    ("reward", [("reward_mean", "reward (mean over episodes)")]),
    ("accuracy", [("accuracy", "train accuracy"), ("val/accuracy", "validation accuracy")]),
    ("KL to the stage's reference", [("kl", "KL")]),
    ("entropy", [("entropy", "entropy")]),
    ("gradient norm", [("grad_norm", "grad norm")]),
)


def stage_starts(records: Sequence[dict]) -> list[tuple[int, str]]:
    """(first step, stage name) of every stage present in the records, in step order."""
    starts, current = [], None
    for record in records:
        stage = record.get("stage")
        if stage != current:
            starts.append((record["step"], str(record.get("stage_name", f"stage {stage}"))))
            current = stage
    return starts


def plot_run(run_dir: str | Path, out: str | Path) -> Path:
    """Draws the curves of `run_dir` (a run folder or its metrics.jsonl) to the PNG `out`; returns it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    records = load_step_metrics(run_dir)
    if not records:
        raise ValueError(f"{run_dir}: no steps logged yet")
    figure, axes = plt.subplots(len(PANELS), 1, figsize=(9, 2.3 * len(PANELS)), sharex=True, layout="constrained")
    starts = stage_starts(records)
    for axis, (title, series) in zip(axes, PANELS):
        for key, label in series:
            points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
            if points:
                steps, values = zip(*points)
                axis.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=label)
        for step, _ in starts[1:]:
            axis.axvline(step - 0.5, color="grey", linestyle="--", linewidth=0.8)
        axis.set_title(title, fontsize=10, loc="left")
        axis.grid(alpha=0.3)
        if len(series) > 1:
            axis.legend(fontsize=8)
    for step, name in starts:  # stage names along the top panel
        label = axes[0].annotate(
            f" {name}",
            (step - 0.5, 0.97),
            xycoords=("data", "axes fraction"),
            fontsize=8,
            va="top",
            color="dimgrey",
            annotation_clip=False,
        )
        label.set_in_layout(False)  # a label left of a one-step run's axis must not squeeze the panels
    axes[-1].set_xlabel("optimizer step")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axes[-1].set_xlim(records[0]["step"] - 0.5, records[-1]["step"] + 0.5)  # (shared x) a stage's label fits
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out
