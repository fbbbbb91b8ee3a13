"""The campaign's scaffold repo: candidates, keep, revert, diff, idempotency, nothing written on rejection."""

from pathlib import Path

import git
import pytest

from harness.proposal import ProposalError, parse_proposal
from harness.workspace import Workspace, WorkspaceError
from rl_pipeline.result import scaffold_commit
from rl_pipeline.scaffold import load_scaffold

LENGTH_COST = "min(len(completion), 64) / 64"


def proposal(*edits, hypothesis="a change"):
    return parse_proposal({"hypothesis": hypothesis, "edits": list(edits)})


KNOB = proposal({"knob": "sampling.temperature", "value": 0.7}, hypothesis="cooler sampling is more accurate")
CODE = proposal({"file": "reward.py", "search": LENGTH_COST, "replace": "min(len(completion), 32) / 32"},
                hypothesis="a steeper length cost")


@pytest.fixture
def ws(tmp_path):
    return Workspace.create(tmp_path / "campaign", "arith")


def assert_clean_on_main(ws):
    assert not ws.repo.head.is_detached and ws.repo.active_branch.name == "main"
    assert not ws.repo.is_dirty(untracked_files=True)


def branches(ws):
    return sorted(h.name for h in ws.repo.heads)


def test_create_commits_the_scaffold_on_main(ws, tmp_path):
    assert ws.path == tmp_path / "campaign" / "scaffold"
    assert load_scaffold(ws.path).task == "arith"
    head = ws.repo.heads.main.commit
    assert head.hexsha == ws.incumbent_commit() and head.author.name == "researcher"
    assert head.author.email == "researcher@localhost"
    assert Workspace.open(tmp_path / "campaign").incumbent_commit() == head.hexsha
    with pytest.raises(WorkspaceError, match="already exists"):
        Workspace.create(tmp_path / "campaign", "arith")
    with pytest.raises(WorkspaceError, match="not a campaign workspace"):
        Workspace.open(tmp_path / "elsewhere")
    assert_clean_on_main(ws)


def test_knob_edit_is_committed_with_comments_kept(ws):
    before = (ws.path / "scaffold.yaml").read_text()
    sha = ws.apply(1, KNOB)
    assert_clean_on_main(ws)
    assert (ws.path / "scaffold.yaml").read_text() == before  # main is untouched until keep
    commit = ws.repo.commit(sha)
    assert ws.candidate_commit(1) == sha and branches(ws) == ["cand/001", "main"]
    assert commit.parents[0].hexsha == ws.incumbent_commit()
    assert commit.message.startswith("cooler sampling is more accurate\n")
    assert list(commit.stats.files) == ["scaffold.yaml"]
    text = (commit.tree / "scaffold.yaml").data_stream.read().decode()
    assert "  temperature: 0.7\n" in text and "# 0 = off" in text and text.startswith("# The arith scaffold")
    assert text.count("\n") == before.count("\n")


def test_file_edit_commit_keep_and_diff(ws):
    sha = ws.apply(2, CODE)
    patch = ws.diff(2)
    assert "-        reward -= weights[\"length\"] * min(len(completion), 64) / 64" in patch
    assert "+        reward -= weights[\"length\"] * min(len(completion), 32) / 32" in patch
    assert "scaffold.yaml" not in patch
    ws.keep(2)
    assert ws.incumbent_commit() == sha
    assert "min(len(completion), 32) / 32" in (ws.path / "reward.py").read_text()
    assert_clean_on_main(ws)
    ws.keep(2)  # idempotent
    assert ws.incumbent_commit() == sha
    assert [c.message.splitlines()[0] for c in ws.repo.iter_commits("main")] == \
        ["a steeper length cost", "Initial scaffold: arith"]
    with pytest.raises(WorkspaceError, match="was kept"):
        ws.revert(2, "changed my mind")


def test_revert_keeps_main_and_pins_the_candidate(ws):
    main = ws.incumbent_commit()
    sha = ws.apply(3, KNOB)
    ws.revert(3, "within the noise floor")
    ws.revert(3, "within the noise floor")  # idempotent
    assert ws.incumbent_commit() == main
    assert ws.repo.git.rev_parse("refs/rejected/003") == sha
    assert ws.rejection_reason(3) == "within the noise floor" and ws.rejection_reason(1) is None
    assert "temperature: 1.0" in (ws.path / "scaffold.yaml").read_text()
    assert_clean_on_main(ws)
    ws.repo.git.reset("--hard", "main")
    ws.repo.git.gc("--prune=now", "--quiet")
    assert ws.repo.commit(sha).hexsha == sha  # still reachable after reset --hard and gc
    with pytest.raises(WorkspaceError, match="was reverted"):
        ws.keep(3)


def test_apply_is_idempotent_per_round(ws):
    sha = ws.apply(4, CODE)
    assert ws.apply(4, CODE) == sha
    ws.keep(4)
    assert ws.apply(4, CODE) == sha  # even after keep, when the search text is gone from main
    with pytest.raises(WorkspaceError, match="different proposal"):
        ws.apply(4, KNOB)
    assert branches(ws) == ["cand/004", "main"]


def test_next_candidate_starts_from_the_new_incumbent(ws):
    first = ws.apply(1, CODE)
    ws.keep(1)
    second = ws.apply(2, KNOB)
    assert ws.repo.commit(second).parents[0].hexsha == first
    ws.revert(2, "worse")
    third = ws.apply(3, proposal({"knob": "grpo.beta", "value": 0.05}))
    assert ws.repo.commit(third).parents[0].hexsha == first


def test_checkout_puts_the_candidate_in_the_tree_for_evaluation(ws):
    sha = ws.apply(1, KNOB)
    ws.checkout(1)
    assert load_scaffold(ws.path).knob("sampling.temperature") == 0.7
    (ws.path / "__pycache__").mkdir(exist_ok=True)  # importing the scaffold leaves bytecode behind
    assert scaffold_commit(ws.path) == sha  # the runner records the exact commit, not "+dirty"
    ws.checkout_main()
    assert_clean_on_main(ws)


def test_checkout_main_recovers_from_an_interrupted_apply(ws):
    ws.repo.git.checkout("--detach", "main")
    (ws.path / "reward.py").write_text("half written")
    (ws.path / "stray.txt").write_text("x")
    ws.checkout_main()
    assert_clean_on_main(ws)
    assert "def rewards" in (ws.path / "reward.py").read_text()


def test_lock_files_of_a_git_killed_mid_write_are_cleared_and_git_works_again(ws):
    """A kill -9 of the campaign inside a checkout leaves .git/index.lock, and every later git
    command then fails ("Another git process seems to be running"), so a resume could never go on."""
    sha = ws.apply(1, KNOB)
    git_dir = Path(ws.repo.git_dir)
    locks = [git_dir / "index.lock", git_dir / "refs" / "heads" / "main.lock"]
    for lock in locks:
        lock.write_text("")
    with pytest.raises(git.GitCommandError, match="index.lock"):
        ws.checkout(1)
    assert ws.clear_stale_locks() == sorted(locks)
    ws.checkout(1)
    assert scaffold_commit(ws.path) == sha
    ws.checkout_main()
    ws.keep(1)
    assert ws.incumbent_commit() == sha and ws.clear_stale_locks() == []


@pytest.mark.parametrize("edit, message", [
    ({"knob": "sampling.temperature", "value": 9.0}, "above the maximum"),
    ({"knob": "sampling.warmth", "value": 1.0}, "unknown knob"),
    ({"file": "surface.yaml", "search": "max: 2.0", "replace": "max: 9.0"}, "never editable"),
    ({"file": "scaffold.yaml", "search": "task: arith", "replace": "task: countdown"}, "not in the surface"),
    ({"file": "../rl_pipeline/evaluate.py", "search": "def", "replace": "x"}, "rl_pipeline"),
    ({"file": "/etc/hostname", "search": "a", "replace": "b"}, "is absolute"),
    ({"file": "reward.py", "search": "no such text", "replace": "b"}, "not found"),
    ({"file": "reward.py", "search": "weights", "replace": "w"}, "found 4 times"),
    ({"file": "reward.py", "search": "out = []", "replace": "out = ["}, "does not compile"),
])
def test_rejected_proposal_writes_nothing(ws, edit, message):
    main = ws.incumbent_commit()
    # A valid edit first: the rejection of the second must still leave no trace of the first.
    with pytest.raises(ProposalError, match=message) as err:
        ws.apply(5, proposal({"knob": "grpo.beta", "value": 0.1}, edit))
    assert err.value.index == 1
    assert_clean_on_main(ws)
    assert ws.incumbent_commit() == main and branches(ws) == ["main"]
    assert "beta: 0.0" in (ws.path / "scaffold.yaml").read_text()


def test_symlink_inside_the_scaffold_is_rejected(ws, tmp_path):
    outside = tmp_path / "outside.py"
    outside.write_text("secret = 1\n")
    (ws.path / "prompt.py").unlink()
    (ws.path / "prompt.py").symlink_to(outside)
    ws.repo.git.add("--all")
    ws.repo.index.commit("a link slipped in")  # even a committed link is refused
    with pytest.raises(ProposalError, match="prompt.py is a symlink"):
        ws.apply(6, proposal({"file": "prompt.py", "search": "secret = 1", "replace": "secret = 2"}))
    assert outside.read_text() == "secret = 1\n"
    assert branches(ws) == ["main"]
    assert_clean_on_main(ws)
