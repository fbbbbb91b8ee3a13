"""The `openai` researcher: any OpenAI-compatible chat endpoint proposes knob and code edits.

It sends the evidence, the surface, the editable files' current text and the rendered memory
(see `answer.proposal_messages`) and reads a proposal out of the answer. An answer that is not
a valid proposal for this scaffold (no JSON, a bad shape, a knob out of range, search text not
found, Python that does not compile) gets one repair request naming the error; a second bad
answer is a failed proposal whose reason the campaign records and shows in the next round's
evidence. The same endpoint writes a critique of each round, appended to the harness's own
(whose numbers are checked like any other).

Transport: the official `openai` client, which retries connection errors, timeouts, 429 and
5xx with exponential backoff (`max_retries`). When retries run out, or the endpoint refuses our
key or model, the campaign stops as `paused` (resumable) rather than burning rounds on an
outage. A 400 (say, a prompt too long for the model) is the round's failure, not the campaign's.

Budgets: total tokens, and cost in USD when prices are configured. They are checked before each
request; a campaign that runs out stops as `budget_exhausted`, resumable with a larger budget
(`researcher resume NAME researcher.budget.tokens=200000`).

State, in `campaign_dir/researcher/`: `openai_usage.json` (token and cost counters, per round
too) and `answers/NNN.json` (the messages and answers of round NNN). A resumed round whose
answers are on disk gets the same proposal back without a new request.

    researcher = OpenAIResearcher({"base_url": "http://127.0.0.1:8000/v1", "model": "base"},
                                  campaign_dir=Path("runs/demo"), seed=0)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from harness.analyze import Evidence
from harness.config import OpenAIOptions, parse_config
from harness.proposal import Proposal, ProposalError, parse_proposal, validate
from harness.researchers.answer import extract_proposal, proposal_messages, repair_messages, strip_thinking
from harness.researchers.base import Researcher, ResearcherStopped
from rl_pipeline.files import write_atomic

USAGE_FILE = "openai_usage.json"
CHARS_PER_TOKEN = 4  # the usual rule of thumb for English text, used only when usage is missing
CRITIQUE_SYSTEM = ("You review one round of a self-optimization campaign. In at most 120 words say what "
                   "changed, what it did to the metrics, whether that is beyond noise, and what to try next. "
                   "State only numbers that appear in the facts below.")


class OpenAIResearcher(Researcher):
    name = "openai"

    def __init__(self, config: dict, *, campaign_dir: Path, seed: int, base_model: str | None = None, client=None):
        import openai

        self.options = parse_config(OpenAIOptions, config, "researcher").model_dump()  # options, defaults: the schema
        self.seed = seed
        self.dir = Path(campaign_dir) / "researcher"
        self.answers_dir = self.dir / "answers"
        key = os.environ.get(self.options["api_key_env"] or "", "")
        self.client = client or openai.OpenAI(base_url=self.options["base_url"], api_key=key or "none",
                                              max_retries=int(self.options["max_retries"]),
                                              timeout=float(self.options["timeout_s"]))
        self._round = 0  # the round being proposed: what usage() reports as this round's
        self.usage_state = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0, "repairs": 0,
                            "invalid_answers": 0, "cost_usd": 0.0, "rounds": {}}
        self.load(self.dir)

    # ------------------------------------------------------------------ state

    def load(self, dir: Path) -> None:
        path = Path(dir) / USAGE_FILE
        if path.is_file():
            self.usage_state = json.loads(path.read_text())

    def save(self, dir: Path) -> None:
        Path(dir).mkdir(parents=True, exist_ok=True)
        write_atomic(Path(dir) / USAGE_FILE, json.dumps(self.usage_state, indent=2))

    def usage(self) -> dict:
        """Totals, and this round's tokens and cost: logged to MLflow each round, shown by status."""
        state = self.usage_state
        last = state["rounds"].get(str(self._round), {})
        out = {k: state[k] for k in ("prompt_tokens", "completion_tokens", "requests", "repairs", "invalid_answers")}
        out["total_tokens"] = state["prompt_tokens"] + state["completion_tokens"]
        out["round_tokens"] = last.get("tokens", 0)
        if self._priced():
            out["cost_usd"] = round(state["cost_usd"], 6)
            out["round_cost_usd"] = round(last.get("cost_usd", 0.0), 6)
        return out

    def _priced(self) -> bool:
        prices = self.options["prices"]
        return prices["prompt"] is not None and prices["completion"] is not None

    # ------------------------------------------------------------------ requests

    def _check_budget(self) -> None:
        budget, state = self.options["budget"], self.usage_state
        used = state["prompt_tokens"] + state["completion_tokens"]
        if budget["tokens"] is not None and used >= budget["tokens"]:
            raise ResearcherStopped("budget_exhausted", f"the token budget is spent ({used} of {budget['tokens']}); "
                                    "resume with a larger one: researcher resume NAME researcher.budget.tokens=N")
        if budget["cost_usd"] is not None and self._priced() and state["cost_usd"] >= budget["cost_usd"]:
            raise ResearcherStopped("budget_exhausted",
                                    f"the cost budget is spent (${state['cost_usd']:.4f} of ${budget['cost_usd']}); "
                                    "resume with a larger one: researcher resume NAME researcher.budget.cost_usd=X")

    def _model(self) -> str:
        if not self.options["model"]:
            models = self._call(lambda: self.client.models.list())
            if not models.data:
                raise ResearcherStopped("paused", f"the endpoint {self.options['base_url']} lists no model; "
                                                  "set researcher.model")
            self.options["model"] = models.data[0].id
        return self.options["model"]

    def _call(self, request):
        """`request()` with the client's retries; errors that retrying cannot fix stop the campaign
        (paused) or, for a request the endpoint refuses (4xx), fail the round with the reason."""
        import openai

        try:
            return request()
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as err:
            raise ResearcherStopped("paused", f"the endpoint {self.options['base_url']} refused us "
                                              f"({err.status_code}): {_message(err)}; check researcher.model and "
                                              f"the key in ${self.options['api_key_env']}") from err
        except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as err:
            raise ResearcherStopped("paused", f"the endpoint {self.options['base_url']} failed after "
                                              f"{self.options['max_retries']} retries: {_message(err)}; "
                                              "resume when it answers again") from err
        except openai.APIStatusError as err:
            raise ProposalError(f"the endpoint refused the request ({err.status_code}): {_message(err)}") from err

    def _chat(self, messages: list[dict], round_no: int, *, max_tokens: int) -> str:
        self._check_budget()
        seed = self.options["seed"] if self.options["seed"] is not None else self.seed * 100003 + round_no
        model = self._model()
        response = self._call(lambda: self.client.chat.completions.create(
            model=model, messages=messages, max_tokens=max_tokens, seed=seed,
            temperature=self.options["temperature"], top_p=self.options["top_p"]))
        answer = (response.choices[0].message.content or "") if response.choices else ""
        self._count(response, messages, answer, round_no)
        return answer

    def _count(self, response, messages: list[dict], answer: str, round_no: int) -> None:
        usage = getattr(response, "usage", None)
        if usage is None:  # an endpoint that reports no usage: estimate, so that budgets still hold
            self.usage_state["estimated_requests"] = self.usage_state.get("estimated_requests", 0) + 1
            prompt = sum(len(m["content"]) for m in messages) // CHARS_PER_TOKEN
            completion = len(answer) // CHARS_PER_TOKEN
        else:
            prompt = int(usage.prompt_tokens or 0)
            completion = int(usage.completion_tokens or 0)
        prices = self.options["prices"]
        cost = (prompt * prices["prompt"] + completion * prices["completion"]) / 1e6 if self._priced() else 0.0
        state = self.usage_state
        state["prompt_tokens"] += prompt
        state["completion_tokens"] += completion
        state["requests"] += 1
        state["cost_usd"] += cost
        this = state["rounds"].setdefault(str(round_no), {"tokens": 0, "cost_usd": 0.0, "requests": 0})
        this["tokens"] += prompt + completion
        this["cost_usd"] += cost
        this["requests"] += 1
        self.save(self.dir)

    # ------------------------------------------------------------------ propose

    def _answers_file(self, round_no: int) -> Path:
        return self.answers_dir / f"{round_no:03d}.json"

    def propose(self, evidence: Evidence, memory_text: str, scaffold_dir: Path) -> Proposal:
        self._round = evidence.round
        saved = self._answers_file(evidence.round)
        if saved.is_file():  # a resumed round: the answers are known, ask nothing again
            record = json.loads(saved.read_text())
            if record["proposal"] is None:
                raise ProposalError(record["error"])
            return parse_proposal(record["proposal"])
        messages = proposal_messages(evidence, memory_text, Path(scaffold_dir),
                                     budget_chars=int(self.options["context_chars"]))
        answers: list[str] = []
        proposal, error = None, None
        try:
            proposal = self._ask(messages, answers, evidence.round, Path(scaffold_dir))
        except ProposalError as err:
            error = str(err)
        self.answers_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(saved, json.dumps({"round": evidence.round, "messages": messages, "answers": answers,
                                        "proposal": proposal.to_dict() if proposal else None,
                                        "error": error}, indent=2))
        if proposal is None:
            raise ProposalError(error)
        return proposal

    def _ask(self, messages: list[dict], answers: list[str], round_no: int, scaffold_dir: Path) -> Proposal:
        """One request, and one repair request if its answer is not a valid proposal."""
        answers.append(self._chat(messages, round_no, max_tokens=int(self.options["max_tokens"])))
        try:
            return _valid(answers[0], scaffold_dir)
        except ProposalError as first:
            self.usage_state["invalid_answers"] += 1
            self.usage_state["repairs"] += 1
            answers.append(self._chat(repair_messages(messages, answers[0], str(first)), round_no,
                                      max_tokens=int(self.options["max_tokens"])))
            try:
                return _valid(answers[1], scaffold_dir)
            except ProposalError as second:
                self.usage_state["invalid_answers"] += 1
                self.save(self.dir)
                raise ProposalError(f"no valid proposal after one repair request: {second} "
                                    f"(first answer: {first})") from second

    # ------------------------------------------------------------------ critique

    def critique(self, facts: str, round_no: int) -> str | None:
        """The endpoint's critique of a round, given the harness's own as facts; None when the
        option is off, the budget is spent, or the endpoint fails (the harness's critique stands)."""
        if not self.options["critique"]:
            return None
        messages = [{"role": "system", "content": CRITIQUE_SYSTEM}, {"role": "user", "content": facts}]
        try:
            text = self._chat(messages, round_no, max_tokens=int(self.options["critique_max_tokens"]))
        except (ResearcherStopped, ProposalError):
            return None
        return strip_thinking(text) or None


def _valid(answer: str, scaffold_dir: Path) -> Proposal:
    proposal = extract_proposal(answer)
    validate(proposal, scaffold_dir)
    return proposal


def _message(err: Any) -> str:
    """The error message of an OpenAI-style error body, or the exception's own text."""
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(err)
