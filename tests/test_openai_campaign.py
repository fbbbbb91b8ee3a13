"""End to end: a campaign whose `openai` researcher talks over real HTTP to `researcher serve`
running our local model, behind an API key.

The served model has random weights, so its answers are not proposals: what is under test is
that every bad answer gets its repair request, is recorded as a failed round with the reason,
and is fed back in the next round's prompt; that a spent token budget stops the campaign
cleanly and a resume with a larger one finishes it; and that tokens reach MLflow and status.
"""

import json

import pytest
from fast_scaffold import TEST_PRESET, fast_scaffold
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.researchers.answer import SYSTEM
from serving.launch import served
from model import build_policy, build_tokenizer, save_policy

KEY = "test-key-123"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("openai_campaign")
    tokenizer = build_tokenizer(["Q: 12 + 34\nA: 46", SYSTEM])
    base = root / "runs" / "models" / "base"
    save_policy(build_policy(TEST_PRESET, tokenizer, seed=0), tokenizer, base)
    # The served researcher model: the same kind of policy with room for a whole proposal prompt.
    researcher_model = build_policy(TEST_PRESET, tokenizer, seed=1)
    researcher_model.config.max_position_embeddings = 8192
    save_policy(researcher_model, tokenizer, root / "researcher-model")
    scaffold = fast_scaffold(root / "fast_arith")
    return root, scaffold


@pytest.mark.slow
def test_openai_researcher_campaign_against_served_local_model(setup, monkeypatch, capsys):
    root, scaffold = setup
    runs = root / "runs"
    monkeypatch.setenv("TEST_RESEARCHER_KEY", KEY)
    with served(root / "researcher-model", env={"RESEARCHER_API_KEY": KEY},
                args=["--served-name", "local-tiny"]) as base_url:
        args = [f"runs_dir={runs}", f"scaffold={scaffold}", "baseline_seeds=[0,1]", "eval_seeds=[0]",
                "reeval_seeds=[1]", "live=false", "name=oa", "rounds=3", "researcher=openai",
                f"researcher.base_url={base_url}", "researcher.api_key_env=TEST_RESEARCHER_KEY",
                "researcher.max_tokens=48", "researcher.context_chars=6000", "researcher.max_retries=1",
                "researcher.budget.tokens=1"]
        # A budget of one token is spent by the first request: the campaign stops cleanly, round 1 undone.
        assert main(["start", *args]) == 0
        out = capsys.readouterr().out
        assert "budget_exhausted" in out and "token budget is spent" in out
        journal = json.loads((runs / "oa" / "journal.json").read_text())["state"]
        assert journal["status"] == "budget_exhausted" and [h["round"] for h in journal["history"]] == [0]

        assert main(["resume", "oa", f"runs_dir={runs}", "researcher.budget.tokens=null"]) == 0
        assert "finished, 3 rounds" in capsys.readouterr().out

    camp = runs / "oa"
    history = json.loads((camp / "journal.json").read_text())["state"]["history"]
    assert [h["round"] for h in history] == [0, 1, 2, 3]
    answers = {n: json.loads((camp / "researcher" / "answers" / f"{n:03d}.json").read_text()) for n in (1, 2, 3)}
    rounds = json.loads((camp / "journal.json").read_text())["rounds"]
    for n, h in enumerate(history[1:], start=1):
        folder = camp / "rounds" / f"{n:03d}"
        verdict = json.loads((folder / "verdict.json").read_text())
        reason, steps = verdict["reason"], rounds[str(n)]["steps"]
        assert steps["decide"]["output"]["reason"] == reason  # the reason on file is the one decided on
        if answers[n]["proposal"] is None:  # the usual case: junk, then junk after the repair request
            assert h["decision"] == "failed"
            assert len(answers[n]["answers"]) == 2 and "no valid proposal after one repair request" in reason
            assert "(first answer: " in reason  # both answers' errors are recorded
            assert reason == f"invalid proposal: {answers[n]['error']}"
            assert "apply" not in steps and not (folder / "proposal.json").exists()
            # the failure is the evidence of the next round: its prompt quotes the reason
            if n < 3:
                assert "no valid proposal after one repair request" in answers[n + 1]["messages"][1]["content"]
        else:  # a valid answer (checked against the scaffold) is applied, evaluated and decided on
            assert json.loads((folder / "proposal.json").read_text()) == answers[n]["proposal"]
            assert not steps["apply"]["output"].get("error") and "evaluate" in steps
            result = json.loads((folder / "result.json").read_text())
            assert h["decision"] == (verdict["decision"] if result["status"] == "ok" else "failed")
            assert h["decision"] in ("keep", "revert", "failed") and h["hypothesis"] == answers[n]["proposal"][
                "hypothesis"]
    memory = (camp / "memory.md").read_text()
    assert "Round 3" in memory
    usage = json.loads((camp / "researcher" / "openai_usage.json").read_text())
    assert usage["requests"] >= 7 and usage["prompt_tokens"] > 1000  # 1 before the stop, 2 a round after
    client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    runs_ = client.search_runs(client.get_experiment_by_name("agentic-researcher").experiment_id,
                               "tags.campaign = 'oa'")
    round3 = next(r for r in runs_ if r.data.tags.get("round") == "3")
    assert round3.data.metrics["usage/total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert round3.data.metrics["usage/round_tokens"] > 0
    assert main(["status", "oa", f"runs_dir={runs}"]) == 0
    assert f"{usage['prompt_tokens'] + usage['completion_tokens']} tok" in capsys.readouterr().out


def test_wrong_key_pauses_the_campaign(setup, monkeypatch, capsys):
    root, scaffold = setup
    runs = root / "runs-key"
    monkeypatch.setenv("TEST_RESEARCHER_KEY", "wrong")
    with served(root / "researcher-model", env={"RESEARCHER_API_KEY": KEY}) as base_url:
        args = [f"runs_dir={runs}", f"base_model={root / 'runs' / 'models' / 'base'}", f"scaffold={scaffold}",
                "baseline_seeds=[0,1]", "eval_seeds=[0]",
                "reeval_seeds=[1]", "live=false", "name=key", "rounds=2", "researcher=openai",
                f"researcher.base_url={base_url}", "researcher.api_key_env=TEST_RESEARCHER_KEY"]
        assert main(["start", *args]) == 0
    out = capsys.readouterr().out
    assert "paused" in out and "refused us (401)" in out and "$TEST_RESEARCHER_KEY" in out
    assert json.loads((runs / "key" / "journal.json").read_text())["state"]["status"] == "paused"
