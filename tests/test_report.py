"""The campaign report: the progress plot is a real PNG, the summary states the campaign's numbers."""

import struct

from harness.report import campaign_stats, comparison_markdown, comparison_plot, progress_plot, summary_markdown

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

HISTORY = [
    {"round": 0, "decision": "baseline", "accuracy": 0.30, "incumbent_accuracy": 0.30, "heldout_accuracy": 0.28,
     "hypothesis": "", "delta": None},
    {"round": 1, "decision": "keep", "accuracy": 0.36, "incumbent_accuracy": 0.36, "heldout_accuracy": 0.33,
     "heldout_delta": 0.05, "false_keep": False, "hypothesis": "cooler sampling | fewer wild answers", "delta": 0.06},
    {"round": 2, "decision": "revert", "accuracy": 0.34, "incumbent_accuracy": 0.36, "heldout_accuracy": None,
     "hypothesis": "higher lr", "delta": -0.02},
    {"round": 3, "decision": "failed", "accuracy": None, "incumbent_accuracy": 0.36, "heldout_accuracy": None,
     "hypothesis": "broken reward", "delta": None},
    {"round": 4, "decision": "keep", "accuracy": 0.42, "incumbent_accuracy": 0.42, "heldout_accuracy": 0.32,
     "heldout_delta": -0.01, "false_keep": True, "hypothesis": "a length penalty\nin the reward", "delta": 0.061},
]


def test_progress_plot_writes_a_png(tmp_path):
    path = progress_plot(HISTORY, tmp_path / "report" / "progress.png", title="demo")
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert (width, height) == (1000, 500)
    assert len(data) > 20_000  # axes, points, legend: far more than an empty canvas


def orange_pixels(path) -> int:
    """Pixels of the false-keep colour (tab:orange, #ff7f0e), within antialiasing's reach."""
    from matplotlib.image import imread
    rgb = imread(str(path))[..., :3]
    return int(((abs(rgb[..., 0] - 1.0) < 0.05) & (abs(rgb[..., 1] - 0.498) < 0.05)
                & (abs(rgb[..., 2] - 0.055) < 0.05)).sum())


def test_progress_plot_marks_a_false_keep_apart_from_the_confirmed_held_out_points(tmp_path):
    marked = orange_pixels(progress_plot(HISTORY, tmp_path / "false.png"))
    confirmed = [{**row, "false_keep": False} for row in HISTORY]
    assert marked > 100 and orange_pixels(progress_plot(confirmed, tmp_path / "none.png")) == 0


def test_progress_plot_handles_a_baseline_only_history(tmp_path):
    assert progress_plot(HISTORY[:1], tmp_path / "p.png").read_bytes()[:8] == PNG_SIGNATURE


def test_summary_states_the_numbers():
    text = summary_markdown("demo", HISTORY, {"n_seeds": 4, "seed_std": 0.012, "seed_range": 0.03,
                                              "halfwidth": 0.021})
    assert text.startswith("# Campaign `demo`")
    assert "- rounds done: 4" in text
    assert "- kept: 2, reverted: 1, failed: 1" in text
    assert "- incumbent accuracy: 0.3000 -> 0.4200 (+40.0%)" in text
    assert "- held-out accuracy: 0.2800 -> 0.3200 (+14.3%)" in text
    assert "- false keeps (held-out change not positive): 1 of 2 kept rounds scored on held-out (round 4)" in text
    assert "- noise floor over 4 seeds: seed_std 0.0120, seed_range 0.0300, halfwidth 0.0210" in text
    assert "| 1 | cooler sampling \\| fewer wild answers | +0.0600 | 0.3600 | 0.3300 | +0.0500 |" in text
    assert "| 4 | a length penalty in the reward | +0.0610 | 0.4200 | 0.3200 | -0.0100 (false keep) |" in text
    assert "higher lr" not in text and "broken reward" not in text


def test_summary_without_kept_rounds():
    history = [HISTORY[0], HISTORY[2] | {"incumbent_accuracy": 0.30}, HISTORY[3] | {"incumbent_accuracy": 0.30}]
    text = summary_markdown("flat", history, None)
    assert "- rounds done: 2" in text and "- kept: 0, reverted: 1, failed: 1" in text
    assert "- incumbent accuracy: 0.3000 -> 0.3000 (+0.0%)" in text
    assert "- held-out accuracy: 0.2800 -> 0.2800 (+0.0%)" in text
    assert "No change was kept." in text and "noise floor" not in text and "false keeps" not in text


def test_comparison_of_two_campaigns():
    slower = [dict(r, incumbent_accuracy=0.30 if r["round"] < 4 else 0.42,
                   decision="revert" if r["round"] == 1 else r["decision"]) for r in HISTORY]
    stats = campaign_stats(HISTORY)
    assert stats == {"rounds": 4, "kept": 2, "false_keeps": 1, "failed": 1, "initial": 0.30, "final": 0.42,
                     "heldout_final": 0.32, "last_keep_round": 4, "mean_incumbent": (0.36 + 0.36 + 0.36 + 0.42) / 4}
    assert campaign_stats(slower)["mean_incumbent"] == (0.30 * 3 + 0.42) / 4
    stuck = [dict(r, incumbent_accuracy=0.30, decision="revert") for r in HISTORY[1:]]
    table = comparison_markdown({"fast": HISTORY, "slow": slower, "stuck": HISTORY[:1] + stuck})
    assert "| reached 0.4000 at round | mean incumbent |" in table  # the best final, 0.42, less 0.02
    assert "| fast | 4 | 2 | 1 | 1 | 0.3000 -> 0.4200 | 0.3200 | 4 | 4 | 0.3750 |" in table
    assert "| slow | 4 | 1 | 1 | 1 | 0.3000 -> 0.4200 | 0.3200 | 4 | 4 | 0.3300 |" in table
    assert "| stuck | 4 | 0 | 0 | 0 | 0.3000 -> 0.3000 | 0.2800 | - | - | 0.3000 |" in table


def test_comparison_plot_writes_a_png(tmp_path):
    data = comparison_plot({"a": HISTORY, "b": HISTORY[:2]}, tmp_path / "c.png").read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 20_000
