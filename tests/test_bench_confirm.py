"""`bench/confirm.py` on a real campaign: every kept change applied alone to the campaign's initial
scaffold, trained and scored on held-out, a row each with its verdict, and the counts under them."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import confirm  # noqa: E402
from campaign_runs import fast_setup, run  # noqa: E402


def test_a_verdict_says_whether_the_interval_reaches_zero():
    assert confirm.verdict(0.02, 0.003) == "yes"
    assert confirm.verdict(0.01, -0.005) == "yes, interval includes 0"
    assert confirm.verdict(0.0, -0.01) == "NO"
    assert confirm.verdict(-0.01, -0.02) == "NO"


@pytest.mark.slow
def test_each_kept_change_is_scored_alone_on_the_initial_scaffold(tmp_path, capsys):
    runs = tmp_path / "runs"
    # ties are kept (margin below 0), so the tiny random base, whose accuracy is 0 whatever the
    # change, still gives kept changes to confirm
    history = run(runs, "c", 2, ["seed=0", "researcher=random", "margin=-0.01", *fast_setup(runs)])
    kept = [r["round"] for r in history if r["decision"] == "keep"]
    assert kept, history
    capsys.readouterr()

    assert confirm.main([str(runs / "c"), "--train-seeds", "0", "--seeds", "0"]) == 0
    out = capsys.readouterr().out
    assert "initial scaffold" in out
    for n in kept:  # a row per kept change: no change helps a policy that answers nothing
        row = next(line for line in out.splitlines() if line.startswith(f"round {n}: "))
        assert row.split()[-1] == "NO" and "+0.000" in row, row
    assert f"0 of {len(kept)} kept changes confirmed on held-out alone on the initial scaffold" in out
    for n in kept:
        assert (runs / "c" / "confirm" / f"round-{n:03d}" / "train-seed-0" / "result.json").is_file()
    assert (runs / "c" / "confirm" / "initial" / "train-seed-0" / "result.json").is_file()


def test_a_folder_that_is_no_campaign_is_refused(tmp_path, capsys):
    assert confirm.main([str(tmp_path)]) == 2
    assert "is not a campaign folder with a baseline" in capsys.readouterr().out
