"""A campaign's report: the progress plot (PNG) and a markdown summary, from its round history.

A history row is one round:

    {"round": 3, "decision": "keep" | "revert" | "failed" | "baseline", "accuracy": 0.41 | None,
     "incumbent_accuracy": 0.41, "heldout_accuracy": 0.39 | None, "heldout_delta": -0.01 | None,
     "false_keep": True | None, "heldout_by_train_seed": {"0": -0.01, ...} | None, "hypothesis": "...",
     "delta": 0.03 | None}

Round 0 is the baseline (the initial scaffold). `accuracy` is the candidate's score (None when it
failed to run), `incumbent_accuracy` the incumbent's after the round's decision, and
`heldout_accuracy` the held-out score, measured for the baseline and for kept rounds. A kept round
also has `heldout_delta`, its held-out change from the incumbent it replaced, and `false_keep`,
whether that change was not positive (both None when held-out could not be scored, and absent in
campaigns from before they were recorded); a change to training kept on its gain over training
seeds has that change averaged over them, each seed's in `heldout_by_train_seed` ({"0": ..., "1":
...}; None otherwise).

    progress_plot(history, "runs/arith-100/progress.png", title="arith-100")
    Path("runs/arith-100/summary.md").write_text(summary_markdown("arith-100", history, floor))
    write_report(Path("runs/arith-100"), "arith-100")   # both, from the campaign's journal
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from harness.journal import Journal
from rl_pipeline.files import write_atomic

KEPT, REVERTED, FAILED = "keep", "revert", "failed"
NEAR_BEST = 0.02  # a comparison counts a campaign as there once its incumbent is this close to the best one
COLORS = {KEPT: "tab:green", REVERTED: "tab:grey", FAILED: "tab:red", "incumbent": "black",
          "heldout": "tab:blue", "false_keep": "tab:orange"}


# ---------------------------------------------------------------- the progress plot

def _axes() -> tuple[Figure, object]:
    # A Figure with an Agg canvas, not pyplot: no global backend or figure state, safe from any thread.
    fig = Figure(figsize=(10, 5), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Figure, ax, path: str | Path, *, ylabel: str, title: str) -> Path:
    """Label the round axis and `ylabel`, add grid and legend, and write the PNG to `path`. The legend
    sits right of the axes: inside them it hid the points of early rounds."""
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def progress_plot(history: list[dict], path: str | Path, title: str = "Campaign progress") -> Path:
    """Write the PNG: candidates by decision, the incumbent as a step line, held-out points."""
    fig, ax = _axes()
    rows = sorted(history, key=lambda r: r["round"])

    rounds = [r["round"] for r in rows]
    ax.step(rounds, [r["incumbent_accuracy"] for r in rows], where="post", color=COLORS["incumbent"],
            linewidth=1.5, label="incumbent")

    for decision, label, marker in ((KEPT, "kept", "o"), (REVERTED, "reverted", "o")):
        points = [r for r in rows if r["decision"] == decision and r["accuracy"] is not None]
        ax.scatter([r["round"] for r in points], [r["accuracy"] for r in points], marker=marker, s=28,
                   color=COLORS[decision], alpha=0.8, zorder=3, label=f"{label} ({len(points)})")

    # A failed run has no score: mark it along the bottom edge (x in data units, y in axes units).
    failed = [r["round"] for r in rows if r["decision"] == FAILED]
    ax.scatter(failed, [0.02] * len(failed), marker="x", s=28, color=COLORS[FAILED], zorder=3,
               transform=ax.get_xaxis_transform(), label=f"failed ({len(failed)})")

    heldout = [r for r in rows if r.get("heldout_accuracy") is not None and r["decision"] in (KEPT, "baseline")]
    confirmed = [r for r in heldout if not r.get("false_keep")]
    ax.scatter([r["round"] for r in confirmed], [r["heldout_accuracy"] for r in confirmed], marker="D", s=30,
               facecolors="none", edgecolors=COLORS["heldout"], zorder=4, label="held-out")
    false = [r for r in heldout if r.get("false_keep")]  # a keep whose held-out change is not positive
    if false:
        ax.scatter([r["round"] for r in false], [r["heldout_accuracy"] for r in false], marker="D", s=36,
                   color=COLORS["false_keep"], zorder=5, label=f"held-out, false keep ({len(false)})")

    return _save(fig, ax, path, ylabel="accuracy", title=title)


# ---------------------------------------------------------------- the markdown summary

def _relative(initial: float | None, final: float | None) -> str:
    if initial is None or final is None:
        return "n/a"
    if initial == 0:
        return "n/a (initial is 0)"
    return f"{(final - initial) / initial:+.1%}"


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _cell(text: str) -> str:
    """Table-safe text: pipes and newlines would break the markdown row."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _delta(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4f}"


def _over_trainings(row: dict) -> str:
    """How many trainings a keep's held-out change is averaged over, when more than one."""
    seeds = row.get("heldout_by_train_seed") or {}
    return f" over {len(seeds)} trainings" if len(seeds) > 1 else ""


def false_keeps(history: list[dict]) -> tuple[list[int], int]:
    """The rounds kept on eval whose held-out change was not positive, and how many keeps were scored."""
    scored = [r for r in history if r["decision"] == KEPT and r.get("false_keep") is not None]
    return sorted(r["round"] for r in scored if r["false_keep"]), len(scored)


def summary_markdown(campaign_name: str, history: list[dict], noise_floor: dict | None = None) -> str:
    """Rounds done, decisions, initial vs final accuracy (internal and held-out), false keeps, and
    the kept changes."""
    rows = sorted(history, key=lambda r: r["round"])
    rounds = [r for r in rows if r["round"] > 0]
    counts = {d: sum(r["decision"] == d for r in rounds) for d in (KEPT, REVERTED, FAILED)}
    baseline = rows[0] if rows else {}

    initial = baseline.get("incumbent_accuracy")
    final = rows[-1]["incumbent_accuracy"] if rows else None
    # The final incumbent is the last kept round (or the baseline), and its held-out score is the one measured then.
    scored = [r for r in rows if r["decision"] in (KEPT, "baseline") and r.get("heldout_accuracy") is not None]
    heldout_initial = baseline.get("heldout_accuracy")
    heldout_final = scored[-1]["heldout_accuracy"] if scored else None

    lines = [
        f"# Campaign `{campaign_name}`",
        "",
        f"- rounds done: {len(rounds)}",
        f"- kept: {counts[KEPT]}, reverted: {counts[REVERTED]}, failed: {counts[FAILED]}",
        f"- incumbent accuracy: {_score(initial)} -> {_score(final)} ({_relative(initial, final)})",
        f"- held-out accuracy: {_score(heldout_initial)} -> {_score(heldout_final)} "
        f"({_relative(heldout_initial, heldout_final)})",
    ]
    false, scored = false_keeps(rounds)
    if scored:
        which = f" (round{'s' if len(false) > 1 else ''} {', '.join(map(str, false))})" if false else ""
        lines.append(f"- false keeps (held-out change not positive): {len(false)} of {scored} kept rounds "
                     f"scored on held-out{which}")
    if noise_floor:
        parts = [f"{key} {noise_floor[key]:.4f}" for key in ("seed_std", "seed_range", "halfwidth")
                 if key in noise_floor]
        seeds = f" over {noise_floor['n_seeds']} seeds" if "n_seeds" in noise_floor else ""
        lines.append(f"- noise floor{seeds}: {', '.join(parts)}")

    lines += ["", "## Kept changes", ""]
    kept = [r for r in rounds if r["decision"] == KEPT]
    if kept:
        lines += ["| round | hypothesis | delta | accuracy | held-out | held-out change |",
                  "|---:|---|---:|---:|---:|---:|"]
        lines += [f"| {r['round']} | {_cell(r.get('hypothesis', ''))} | {_delta(r.get('delta'))} | "
                  f"{_score(r.get('accuracy'))} | {_score(r.get('heldout_accuracy'))} | "
                  f"{_delta(r.get('heldout_delta'))}{_over_trainings(r)}{' (false keep)' if r.get('false_keep') else ''} |"
                  for r in kept]
    else:
        lines.append("No change was kept.")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- comparing campaigns

def write_report(campaign_dir: Path, name: str) -> tuple[Path, Path]:
    """progress.png and summary.md of the rounds a campaign's journal holds; reads nothing else and
    changes nothing else."""
    journal = Journal(campaign_dir)
    history = journal.get("history") or []
    plot = progress_plot(history, campaign_dir / "progress.png")
    summary = campaign_dir / "summary.md"
    write_atomic(summary, summary_markdown(name, history, journal.get("noise_floor")))
    return plot, summary


def campaign_stats(history: list[dict]) -> dict:
    """What a comparison of researchers looks at: where the incumbent ends, how soon it got there,
    and the mean incumbent over the rounds (the area under its curve: reaching a score sooner counts)."""
    rows = sorted(history, key=lambda r: r["round"])
    rounds = [r for r in rows if r["round"] > 0]
    kept = [r for r in rounds if r["decision"] == KEPT]
    scored = [r for r in rows if r["decision"] in (KEPT, "baseline") and r.get("heldout_accuracy") is not None]
    return {"rounds": len(rounds), "kept": len(kept), "false_keeps": len(false_keeps(rounds)[0]),
            "failed": sum(r["decision"] == FAILED for r in rounds),
            "initial": rows[0]["incumbent_accuracy"] if rows else None,
            "final": rows[-1]["incumbent_accuracy"] if rows else None,
            "heldout_final": scored[-1]["heldout_accuracy"] if scored else None,
            "last_keep_round": kept[-1]["round"] if kept else None,
            "mean_incumbent": sum(r["incumbent_accuracy"] for r in rounds) / len(rounds) if rounds else None}


def comparison_markdown(histories: dict[str, list[dict]]) -> str:
    """One row per campaign: rounds, keeps, false keeps, failures, final and held-out accuracy, last
    keep, the first round whose incumbent came within NEAR_BEST of the best final incumbent of all
    of them (how soon each got where the best one ended), and the mean incumbent."""
    stats = {name: campaign_stats(history) for name, history in histories.items()}
    target = max((s["final"] for s in stats.values() if s["final"] is not None), default=None)
    target = None if target is None else target - NEAR_BEST
    lines = [f"| campaign | rounds | kept | false keeps | failed | accuracy | held-out | last keep at round | "
             f"reached {_score(target)} at round | mean incumbent |",
             "|---|---:|---:|---:|---:|---|---|---:|---:|---:|"]
    for name, history in histories.items():
        s = stats[name]
        reached = next((r["round"] for r in sorted(history, key=lambda r: r["round"])
                        if target is not None and r["incumbent_accuracy"] >= target - 1e-9), None)
        lines.append(f"| {_cell(name)} | {s['rounds']} | {s['kept']} | {s['false_keeps']} | {s['failed']} | "
                     f"{_score(s['initial'])} -> {_score(s['final'])} | {_score(s['heldout_final'])} | "
                     f"{s['last_keep_round'] if s['last_keep_round'] is not None else '-'} | "
                     f"{reached if reached is not None else '-'} | {_score(s['mean_incumbent'])} |")
    return "\n".join(lines) + "\n"


def comparison_plot(histories: dict[str, list[dict]], path: str | Path, title: str = "Incumbent by round") -> Path:
    """The incumbent's accuracy of several campaigns on one set of axes, kept rounds marked."""
    fig, ax = _axes()
    for name, history in histories.items():
        rows = sorted(history, key=lambda r: r["round"])
        line, = ax.step([r["round"] for r in rows], [r["incumbent_accuracy"] for r in rows], where="post",
                        linewidth=1.5, label=name)
        kept = [r for r in rows if r["decision"] == KEPT]
        ax.scatter([r["round"] for r in kept], [r["incumbent_accuracy"] for r in kept], s=28, zorder=3,
                   color=line.get_color())
    return _save(fig, ax, path, ylabel="incumbent accuracy", title=title)
