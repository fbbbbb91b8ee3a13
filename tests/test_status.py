"""`researcher status` as a user reads it in an 80-column terminal: real campaign folders, the real CLI."""

from harness.campaigns import create_campaign
from harness.cli import main
from harness.config import compose_config
from harness.journal import Journal


def test_status_shows_every_campaign_s_whole_name_and_only_the_columns_some_campaign_fills(tmp_path, monkeypatch,
                                                                                            capsys):
    monkeypatch.setenv("COLUMNS", "80")
    runs = tmp_path / "runs"
    names = ["efficacy-local-s1", "efficacy-cmaes-s1", "efficacy-tpe-s1"]
    for name in names:
        create_campaign(compose_config([f"runs_dir={runs}", f"name={name}", "researcher=random", "rounds=100"]))
    Journal(runs / "efficacy-tpe-s1").set("status", "running")  # no process holds its lock
    assert main(["status", f"runs_dir={runs}"]) == 0
    out = capsys.readouterr().out
    lines = {name: next((line for line in out.splitlines() if name in line), None) for name in names}
    assert all(lines.values()), out  # before: each cut to "efficacy-…" in 80 columns
    assert "not started" in lines["efficacy-local-s1"] and "0/100" in lines["efficacy-local-s1"]
    assert "stopped (resume" in lines["efficacy-tpe-s1"]  # the journal says running; nothing holds the lock
    assert "pending" not in out and "researcher usage" not in out  # no campaign has either


def test_status_of_a_runs_folder_without_campaigns_says_so_and_fails(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "300")  # the error on one line, so the path is not folded
    assert main(["status", f"runs_dir={tmp_path / 'runz'}"]) == 2  # a mistyped folder
    err = capsys.readouterr().err
    assert f"no campaign under {tmp_path / 'runz'}/" in err and "researcher start" in err
    assert not (tmp_path / "runz").exists()  # nothing made on the way
