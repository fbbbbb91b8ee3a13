"""The `openai` researcher: reading proposals out of realistic answers, the prompt, and the
request path (repair, retries, refusals, budgets) against a scripted OpenAI-style HTTP endpoint.

The endpoint here is a stand-in for a remote model (answers, status codes), not for the code
under test; the researcher talks to it over real HTTP through the official client. The end to
end campaign against `researcher serve` is in test_openai_campaign.py.
"""

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harness.analyze import Evidence
from harness.proposal import FileEdit, KnobEdit, ProposalError
from harness.researchers import ResearcherStopped, make_researcher
from harness.researchers.answer import extract_proposal, proposal_messages, strip_thinking

ARITH = Path(__file__).resolve().parents[1] / "scaffolds" / "arith"
KNOB = '{"hypothesis": "cooler sampling", "edits": [{"knob": "sampling.temperature", "value": 0.2}]}'


# ---------------------------------------------------------------- answers as models write them

def test_bare_fenced_and_wrapped_answers():
    assert extract_proposal(KNOB).edits == (KnobEdit("sampling.temperature", 0.2),)
    fenced = f"Here is my proposal:\n```json\n{KNOB}\n```\nIt should help."
    assert extract_proposal(fenced).hypothesis == "cooler sampling"
    prose = f"I think we should lower the temperature. {KNOB} Let me know."
    assert extract_proposal(prose).edits[0].value == 0.2


def test_thinking_is_stripped_even_when_it_contains_json():
    answer = ('<think>Maybe {"hypothesis": "wrong", "edits": [{"knob": "sampling.top_k", "value": 5}]}? '
              "No, temperature is better.</think>\n\n" + KNOB)
    assert extract_proposal(answer).edits == (KnobEdit("sampling.temperature", 0.2),)
    assert strip_thinking("<think>still thinking about it") == ""
    with pytest.raises(ProposalError, match="only thinking"):
        extract_proposal("<think>the answer was cut off while thinking")


def test_code_edit_with_escaped_newlines():
    answer = json.dumps({"hypothesis": "reward exact answers more",
                         "edits": [{"file": "reward.py", "search": "def rewards(", "replace": "def rewards(\n"}]})
    edit = extract_proposal(f"```\n{answer}\n```").edits[0]
    assert isinstance(edit, FileEdit) and edit.replace == "def rewards(\n"


@pytest.mark.parametrize("answer, message", [
    ("", "empty"),
    ("I would lower the temperature to 0.2.", "no JSON object with 'hypothesis' and 'edits'"),
    ('{"hypothesis": "cut off", "edits": [{"knob": "sampling.temp', "no JSON object"),
    ('[{"knob": "sampling.temperature", "value": 0.2}]', "no JSON object"),
    ('{"knob": "sampling.temperature", "value": 0.2}', "no JSON object"),  # an edit, not a proposal
    ('{"hypothesis": "x", "edits": [], "confidence": 0.9}', "unexpected key"),
    ('{"hypothesis": "x", "edits": []}', "'edits' is empty"),
    ('{"hypothesis": "x", "edits": [{"knob": "sampling.temperature"}]}', "edit 0"),
])
def test_bad_answers_say_what_is_wrong(answer, message):
    with pytest.raises(ProposalError, match=message):
        extract_proposal(answer)


# ---------------------------------------------------------------- the prompt

@pytest.fixture
def scaffold(tmp_path):
    dst = tmp_path / "arith"
    shutil.copytree(ARITH, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def evidence(round_no=3, reason="revert: accuracy -0.010; the estimate is not above the margin"):
    return Evidence(round=round_no, incumbent_accuracy=0.41, incumbent_ci95=(0.35, 0.47),
                    incumbent_metrics={"format_valid_rate": 0.9}, knobs={"sampling.temperature": 1.0},
                    failures={"wrong_answer": {"count": 12, "examples": [
                        {"question": "2+2", "completion": "5", "expected": "4"}]}},
                    last_round={"round": round_no - 1, "decision": "failed", "reason": reason}, trend=[0.4])


def test_prompt_has_evidence_surface_files_and_the_newest_memory(scaffold):
    memory = "".join(f"## Round {n}\nrefuted: something {n}\n" for n in range(1, 200))
    messages = proposal_messages(evidence(reason="edit 0: search text 'zzz' not found in reward.py"), memory,
                                 scaffold, budget_chars=6000)
    text = messages[0]["content"] + messages[1]["content"]
    assert len(text) <= 6000
    user = messages[1]["content"]
    assert "search text 'zzz' not found in reward.py" in user  # the last failure's exact reason
    assert "sampling.temperature = 1.0; float in [0.0, 2.0]" in user
    assert "editable files: reward.py, prompt.py, data.py" in user
    assert "def format_prompt" in user
    assert "Round 199" in user and "Round 1\n" not in user  # the memory's oldest part goes first


def test_prompt_lists_the_moves_and_an_answer_may_name_one(scaffold):
    user = proposal_messages(evidence(), "", scaffold, budget_chars=24000)[1]["content"]
    assert '{"move": "<move name>"}' in proposal_messages(evidence(), "", scaffold, budget_chars=24000)[0]["content"]
    assert "- reward_partial_credit: a well-formed but wrong answer earns" in user
    assert "not available now" not in user
    (scaffold / "prompt.py").write_text((scaffold / "prompt.py").read_text().replace("Q: {question}", "Q:{question}"))
    user = proposal_messages(evidence(), "", scaffold, budget_chars=24000)[1]["content"]
    assert "- prompt_one_shot: one worked example" in user
    assert user.count("(not available now: already applied, or its text was changed)") == 2  # both prompt moves
    proposal = extract_proposal('<think>partial credit</think>{"hypothesis": "rank wrong answers", '
                                '"edits": [{"move": "reward_partial_credit"}]}')
    assert proposal.kind == "code" and proposal.edits[0].move == "reward_partial_credit"


# ---------------------------------------------------------------- a scripted endpoint

class Endpoint:
    """An OpenAI-style HTTP server that answers from a script: each item is an answer text or an
    (HTTP status, error message) pair; it records every request body it gets."""

    def __init__(self):
        self.script, self.requests, self.no_usage = [], [], False
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("retry-after-ms", "10")  # the client honours it: fast retries
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "scripted", "object": "model",
                                                             "created": 0, "owned_by": "test"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.requests.append(body)
                item = endpoint.script.pop(0) if endpoint.script else (500, "script exhausted")
                if isinstance(item, tuple):
                    self._send(item[0], {"error": {"message": item[1], "type": "test", "code": None}})
                    return
                usage = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
                self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": item}}]}
                           | ({} if endpoint.no_usage else {"usage": usage}))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def endpoint():
    server = Endpoint()
    yield server
    server.server.shutdown()


def researcher(tmp_path, endpoint, **options):
    config = {"name": "openai", "base_url": endpoint.url, "max_retries": 2, "timeout_s": 10} | options
    return make_researcher(config, campaign_dir=tmp_path / "campaign", seed=0, base_model="")


def test_valid_answer_is_counted_saved_and_replayed_without_a_request(tmp_path, endpoint, scaffold):
    endpoint.script = [f"```json\n{KNOB}\n```"]
    r = researcher(tmp_path, endpoint, prices={"prompt": 1.0, "completion": 2.0})
    proposal = r.propose(evidence(), "memory", scaffold)
    assert proposal.edits == (KnobEdit("sampling.temperature", 0.2),)
    assert endpoint.requests[0]["model"] == "scripted"  # the first listed model
    assert endpoint.requests[0]["messages"][0]["role"] == "system"
    usage = r.usage()
    assert (usage["total_tokens"], usage["round_tokens"], usage["requests"]) == (120, 120, 1)
    assert usage["cost_usd"] == pytest.approx((100 * 1.0 + 20 * 2.0) / 1e6)
    again = researcher(tmp_path, endpoint)  # a resumed campaign asks for the same round
    assert again.propose(evidence(), "memory", scaffold) == proposal
    assert len(endpoint.requests) == 1 and again.usage()["total_tokens"] == 120


def test_a_bad_answer_gets_one_repair_request_naming_the_error(tmp_path, endpoint, scaffold):
    bad = '{"hypothesis": "hotter", "edits": [{"knob": "sampling.temperature", "value": 9}]}'
    endpoint.script = [bad, KNOB]
    proposal = researcher(tmp_path, endpoint).propose(evidence(), "", scaffold)
    assert proposal.edits[0].value == 0.2
    repair = endpoint.requests[1]["messages"]
    assert repair[-2] == {"role": "assistant", "content": bad}
    assert "above the maximum" in repair[-1]["content"]


def test_two_bad_answers_fail_the_proposal_with_both_reasons(tmp_path, endpoint, scaffold):
    endpoint.script = ["no idea", '{"hypothesis": "x", "edits": [{"file": "reward.py", "search": "zzz", '
                                  '"replace": "y"}]}']
    r = researcher(tmp_path, endpoint)
    with pytest.raises(ProposalError, match="after one repair request: .*zzz.*not found.*first answer: .*no JSON"):
        r.propose(evidence(), "", scaffold)
    assert r.usage()["invalid_answers"] == 2 and len(endpoint.requests) == 2
    saved = json.loads((tmp_path / "campaign" / "researcher" / "answers" / "003.json").read_text())
    assert saved["answers"][0] == "no idea" and saved["proposal"] is None
    with pytest.raises(ProposalError, match="after one repair"):  # a resumed round fails the same way
        researcher(tmp_path, endpoint).propose(evidence(), "", scaffold)
    assert len(endpoint.requests) == 2


def test_429_and_500_are_retried(tmp_path, endpoint, scaffold):
    endpoint.script = [(429, "slow down"), (503, "overloaded"), KNOB]
    assert researcher(tmp_path, endpoint).propose(evidence(), "", scaffold).edits[0].value == 0.2
    assert len(endpoint.requests) == 3


def test_an_outage_pauses_the_campaign_after_the_retries(tmp_path, endpoint, scaffold):
    endpoint.script = [(500, "down")] * 5
    with pytest.raises(ResearcherStopped, match="failed after 2 retries: down") as stop:
        researcher(tmp_path, endpoint).propose(evidence(), "", scaffold)
    assert stop.value.status == "paused" and len(endpoint.requests) == 3
    assert not (tmp_path / "campaign" / "researcher" / "answers" / "003.json").exists()  # asked again on resume


def test_unreachable_endpoint_pauses(tmp_path, scaffold):
    config = {"name": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m", "max_retries": 1,
              "timeout_s": 2}
    r = make_researcher(config, campaign_dir=tmp_path, seed=0, base_model="")
    with pytest.raises(ResearcherStopped, match="resume when it answers again"):
        r.propose(evidence(), "", scaffold)


def test_refusals(tmp_path, endpoint, scaffold):
    endpoint.script = [(401, "bad key")]
    with pytest.raises(ResearcherStopped, match=r"refused us \(401\): bad key; check .*\$OPENAI_API_KEY"):
        researcher(tmp_path / "a", endpoint).propose(evidence(), "", scaffold)
    endpoint.script = [(400, "prompt too long")]
    with pytest.raises(ProposalError, match=r"refused the request \(400\): prompt too long"):
        researcher(tmp_path / "b", endpoint).propose(evidence(), "", scaffold)


def test_token_and_cost_budgets_stop_the_campaign(tmp_path, endpoint, scaffold):
    endpoint.script = [KNOB, KNOB]
    r = researcher(tmp_path, endpoint, budget={"tokens": 100})
    r.propose(evidence(1), "", scaffold)  # 120 tokens: over budget, but it was already paid for
    with pytest.raises(ResearcherStopped, match=r"token budget is spent \(120 of 100\)") as stop:
        r.propose(evidence(2), "", scaffold)
    assert stop.value.status == "budget_exhausted" and len(endpoint.requests) == 1
    r = researcher(tmp_path / "cost", endpoint, budget={"cost_usd": 1e-5}, prices={"prompt": 1.0, "completion": 1.0})
    r.propose(evidence(1), "", scaffold)
    with pytest.raises(ResearcherStopped, match="cost budget is spent"):
        r.propose(evidence(2), "", scaffold)


def test_an_endpoint_without_usage_is_estimated_so_budgets_hold(tmp_path, endpoint, scaffold):
    endpoint.script, endpoint.no_usage = [KNOB, KNOB], True
    r = researcher(tmp_path, endpoint, budget={"tokens": 500})
    r.propose(evidence(1), "", scaffold)
    prompt_chars = sum(len(m["content"]) for m in endpoint.requests[0]["messages"])
    assert r.usage()["prompt_tokens"] == prompt_chars // 4 > 500
    with pytest.raises(ResearcherStopped, match="token budget is spent"):
        r.propose(evidence(2), "", scaffold)


def test_critique_comes_from_the_model_and_never_fails_the_round(tmp_path, endpoint):
    endpoint.script = ["<think>hmm</think>The change did nothing beyond noise.", (400, "nope")]
    r = researcher(tmp_path, endpoint, model="scripted")
    assert r.critique("facts", 1) == "The change did nothing beyond noise."
    assert r.critique("facts", 2) is None
    assert researcher(tmp_path, endpoint, critique=False).critique("facts", 3) is None


def test_unknown_options_are_errors(tmp_path, endpoint):
    with pytest.raises(ValueError, match=r"^researcher.url: unknown key; valid keys of researcher \(openai\): "
                                         r"name, base_url, model, api_key_env, temperature, .*, budget, prices$"):
        researcher(tmp_path, endpoint, url="x")
    with pytest.raises(ValueError, match=r"^researcher.budget.dollars: unknown key; valid keys of researcher.budget: "
                                         r"tokens, cost_usd$"):
        researcher(tmp_path, endpoint, budget={"dollars": 1})
    with pytest.raises(ValueError, match="researcher.budget.tokens must be a positive number, or null for no limit"):
        researcher(tmp_path, endpoint, budget={"tokens": 0})
    with pytest.raises(ValueError, match="researcher.base_url must not be empty"):
        researcher(tmp_path, endpoint, base_url="")
