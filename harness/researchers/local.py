"""The local researcher: our MoE policy proposes knob edits and code moves under a grammar, and
learns from verdicts.

Propose. The scaffold's surface is turned into a finite set of candidate edits: every searchable
knob times a grid of values (7 points across its range, log-spaced for `log: true`, every choice
of a choice knob, integers deduplicated), minus the current value and minus any edit the
scaffold would reject; plus every code move of the scaffold that applies now. Each candidate is
the text `{"knob": "<name>", "value": <value>}` or `{"move": "<name>"}` plus EOS, tokenized; the
token sequences form a trie, the grammar. The model scores every sentence of the grammar: its
log-probability with the model's logits renormalized, at each branch of the trie, over the tokens
that continue some candidate (the prompt runs once, then all candidates in one batch over its
cache). So every proposal is valid by construction, and the model's only freedom is which edit
to make.
An edit already tried against the same incumbent (its knobs and its editable files: a kept move
changes no knob) is left out of the trie: its verdict is known (the same seeds would give it
again), so proposing it again would only spend a round. When every edit has been tried the whole
grid is open again.
A numeric knob not yet tried in the campaign is offered inside its range only, never at its min or
max (`interior_first`): Thompson sampling on a trend (below) puts a knob's first trial at an end, and
one bad outcome there tilts the trend against the whole range. In five campaigns at 800 problems, 59
of 73 first trials of a numeric knob were at an end; the learning rate's, 2e-4, lost in all five, and
the two of seeds 0-3 that reached 3.42e-5 only at round 77 or never stayed near the initial score.
The prompt is the rendered memory then the evidence summary, cut from the left to fit the context
(old memory goes first, the evidence of this round last).

Value-level credit. The model's choice is guided by a credit model (`credit.py`): a Bayesian model
of each knob value's effect, fitted to every delta this campaign has measured. One posterior draw
(Thompson sampling) gives each candidate a predicted gain, and the edit is sampled from the model's
log-probability plus `credit_weight` times that gain. The model alone learns slowly which knob to
touch (one REINFORCE step per round); the credit model says which value, and in which direction,
from the same outcomes, and lets knobs that never moved the score fade. `credit_weight: 0` leaves
the choice to the model alone.

Evidence that steers. An edit's predicted gain depends on the evidence: the incumbent's format
failures, truncation, repetition and kinds of wrong answers, as a context vector (`context.py`).
Each observation is saved with the context of the round it was measured in, and the credit model
learns from the outcomes how each edit's effect moves with it (a move that paid off where answers
were malformed is expected to pay off again where they are). A move's `targets` in moves.yaml give
that a weak start, a prior the outcomes overturn. `evidence: false` blanks it all, for the
ablation: no summary in the prompt and the zero context, now and in the observations it saves.

Where training leaves the policy as it was (TRL's lr 1e-6), a reward edit (a `reward.*` weight, a
move on reward.py) cannot show what it does; the incumbent's `policy_drift`, how far its training
moved the weights, scales such an edit's effect in the credit model, so its zeros there do not
write it off for later, when a kept rate moves the policy.

Stacking (`stacking.py`). Some changes win only together. A proposal may add its edit to a near
miss, an earlier proposal that gained against the current incumbent without a keep (or, with the
evidence on, cut one of its failure rates well beyond the noise), on a knob not yet paired with it
(a move that targets the incumbent's common failures drawn more often), or set one of the near
miss's knobs to another value (`researcher.stack`, 0 for one edit a round); the drawn edit is then
the one learned from.

Several candidates a round (`propose_many`): K distinct edits drawn without replacement from the
same scores, each learned from on its own verdict.

Fills (`propose_fills`, harness/fill.py): where a pool's worker would idle beside the round's
training, more edits of one sampling knob each, drawn without replacement from the same model
scores restricted to them (the credit model's draw from the round's stream of fills), added to
the round's pending picks and learned from as its other candidates are.

Decoder companions (`companions`). A proposal that changes training (and sets no sampling knob)
is followed by a companion per decoder the scaffold declares (surface `decoders`): the same edits
plus the decoder's, which trains the same policy and decodes it otherwise (a recipe may pay off
only under another decoder). The companion is the same choice of the model, learned from on its
own verdict, and the credit model records it as the proposal's edits plus the decoder's.

Learn. REINFORCE on the tokens of the proposal under the same masked distribution: reward +1 for a
keep, -1 for a failed run, otherwise the accuracy delta scaled and clipped to [-1, 1]; minus a
running-mean baseline; one Adam step. The round's delta and interval are added to the credit
model's observations (a move as the choice knob `move:<name>`, from off to on), with the context
the proposal was made in. The campaign then saves the checkpoint (weights, tokenizer, optimizer,
state with the observations) once for the round's candidates, so the researcher that runs the loop
is the one that learned from them; a kill before that save loses the round's steps with it, and
the resumed round learns them again from the checkpoint before.

Files under `campaign_dir/researcher/` (`save(dir)` and `load(dir)` take such a folder):
`checkpoint/`, a copy of the base model on first use, then the latest learned one, replaced
atomically; and `pending.json`, the prompt, candidates and picks of the last round's proposals, so
`learn` works after a crash between propose and learn (its context included).

    researcher = LocalResearcher({"temperature": 1.0, "learning_rate": 1e-4, "credit_weight": 100.0, "evidence": True},
                                 campaign_dir=Path("runs/demo"), seed=0, base_model="runs/models/base")
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.analyze import Evidence
from harness.config import LocalOptions, parse_config
from harness.proposal import KnobEdit, MoveEdit, Proposal, ProposalError, validate
from harness.fill import FILL_NOTE, sets_sampling
from harness.researchers.base import (FILL_STREAM, Researcher, ResearcherExhausted, decoder_companions,
                                      move_hypothesis, move_space, round_seed, same_value, scaffold_knob_space,
                                      short_float)
from harness.researchers.context import RATES, blank_context, evidence_context, target_features
from harness.researchers.credit import CreditModel
from harness.researchers.stacking import (JOIN, StackPick, edit_record, measured_on, near_misses, pick_stack,
                                         stack_chance, target_pull)
from model import load_policy, load_tokenizer, save_policy
from rl_pipeline.files import recover_dir, replacing_dir, write_atomic
from rl_pipeline.scaffold import load_scaffold

FLOAT_DIGITS = 3  # significant digits of a grid value: 0.667, 4.64e-06
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"


# ---------------------------------------------------------------------------------------------
# the grammar: candidate edits from the surface, as token sequences in a trie

def value_grid(spec: dict, current: Any, points: int) -> list:
    """The values a knob may be proposed at: a grid over its range, or its choices; never `current`."""
    if "choices" in spec:
        values = list(spec["choices"])
    else:
        low, high = spec["min"], spec["max"]
        raw = np.geomspace(low, high, points) if spec.get("log") else np.linspace(low, high, points)
        if spec["type"] == "int":
            values = sorted({int(round(v)) for v in raw})
        else:
            values = list(dict.fromkeys(min(max(short_float(float(v), FLOAT_DIGITS), low), high) for v in raw))
    return [v for v in values if not same_value(v, current)]


def candidate_text(knob: str, value: Any) -> str:
    return json.dumps({"knob": knob, "value": value})


def edit_text(edit: KnobEdit | MoveEdit) -> str:
    """A candidate's text in the grammar, as the model writes it."""
    if isinstance(edit, MoveEdit):
        return json.dumps({"move": edit.move})
    return candidate_text(edit.knob, edit.value)


MOVE_KNOB = "move:"  # a move in the credit model: the choice knob move:<name>, False (off) or True (on)


def credit_edit(edit: KnobEdit | MoveEdit) -> tuple[str, Any]:
    """(knob, value) of an edit as the credit model sees it."""
    return (f"{MOVE_KNOB}{edit.move}", True) if isinstance(edit, MoveEdit) else (edit.knob, edit.value)


def build_trie(sequences: list[list[int]]) -> dict:
    """Nested dicts token -> subtree; every sequence ends in EOS, so a leaf is exactly one candidate."""
    root: dict = {}
    for seq in sequences:
        node = root
        for token in seq:
            node = node.setdefault(token, {})
    return root


def interior_first(candidates: list[tuple[str, KnobEdit | MoveEdit]], specs: dict,
                   observations: list[dict]) -> list[tuple[str, KnobEdit | MoveEdit]]:
    """The candidates less the ends of a numeric knob's range while the knob has not been tried in the
    campaign (in no observation, alone or stacked), unless its ends are all it has on offer.

    A knob's first trial at an end is what Thompson sampling on a trend gives (the largest step has the
    largest drawn gain either way), and an end is the riskiest value: one bad outcome there tilts the
    trend against the whole range, the good middle included."""
    tried = {edit["knob"] for obs in observations for edit in [obs, *obs.get("stacked", [])]}

    def at_an_end(edit: KnobEdit | MoveEdit) -> bool:
        if isinstance(edit, MoveEdit) or edit.knob in tried or "choices" in specs[edit.knob]:
            return False
        spec = specs[edit.knob]
        return same_value(edit.value, spec["min"]) or same_value(edit.value, spec["max"])

    inside = {edit.knob for _, edit in candidates if isinstance(edit, KnobEdit) and not at_an_end(edit)}
    return [c for c in candidates if not (at_an_end(c[1]) and c[1].knob in inside)]


def knob_state_key(current: dict, files: dict[str, str] | None = None) -> str:
    """A short name for an incumbent, its knob values and its editable files' texts: the edits tried
    are remembered per incumbent (a kept move changes the files and not the knobs)."""
    state = current if not files else {"knobs": current, "files": files}
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()[:16]


def companion_pick(pick: dict, companion: Proposal, drawn: tuple[str, KnobEdit | MoveEdit], current: dict) -> dict:
    """The pending pick of a proposal's decoder companion: the same choice of the model (so the model
    learns from the companion's verdict too), recorded for the credit model as the proposal's edits
    (`stacked`) plus the decoder's, the decoder's last knob being the observation's own edit."""
    text, edit = drawn
    knob, value = credit_edit(edit)
    records = [*pick.get("stacked", []), edit_record(knob, pick["old_value"], value, text)]
    records += [edit_record(e.knob, current[e.knob], e.value, candidate_text(e.knob, e.value))
                for e in companion.edits[len(pick["proposal"]["edits"]):]]
    *stacked, last = records
    return {"proposal": companion.to_dict(), "choice": pick["choice"], "old_value": last["from"],
            "stacked": stacked, "last_text": last["text"], "text": JOIN.join(r["text"] for r in records)}


# ---------------------------------------------------------------------------------------------
# the researcher

class LocalResearcher(Researcher):
    name = "local"

    def __init__(self, config: dict, *, campaign_dir: Path, seed: int, base_model: str):
        options = parse_config(LocalOptions, config, "researcher")  # its options and defaults: the schema
        self.temperature = options.temperature
        self.lr = options.learning_rate
        self.grid_points = options.grid_points
        self.context_tokens = options.context_tokens
        self.reward_scale = options.reward_scale
        self.credit_weight = options.credit_weight
        self.evidence = options.evidence
        self.stack = options.stack
        self.companions = options.companions
        self.interior_first = options.interior_first
        self.seed = seed
        self.dir = Path(campaign_dir) / "researcher"
        self.pending_file = self.dir / "pending.json"
        self.counts = {"proposals": 0, "prompt_tokens": 0, "generated_tokens": 0, "learn_steps": 0}
        # the valid candidates per scaffold content (knobs and code)
        self._candidates: dict[str, list[tuple[str, KnobEdit | MoveEdit]]] = {}
        self._init_checkpoint(Path(base_model))
        self.load(self.dir)

    # ------------------------------------------------------------------ checkpoints

    @staticmethod
    def _checkpoint(dir: Path) -> Path:
        """The checkpoint folder under a researcher folder (taken back from `checkpoint.old` when a
        crash came in the middle of a swap)."""
        return recover_dir(Path(dir) / "checkpoint")

    def _init_checkpoint(self, base_model: Path) -> None:
        """First use: the campaign's checkpoint starts as a copy of the base policy."""
        checkpoint = self._checkpoint(self.dir)
        if checkpoint.exists():
            return
        if not (base_model / "config.json").is_file():
            raise FileNotFoundError(f"base model {str(base_model)!r} has no config.json; pretrain it first")
        with replacing_dir(checkpoint) as tmp:
            shutil.copytree(base_model, tmp, dirs_exist_ok=True)
            write_atomic(tmp / STATE_FILE, json.dumps({"baseline": 0.0, "rounds_learned": 0, "last_learned_round": 0}))

    def save(self, dir: Path) -> None:
        """Weights, tokenizer, optimizer and state into `dir/checkpoint`, swapped in whole so a crash
        never leaves a half-written checkpoint."""
        checkpoint = self._checkpoint(dir)
        if self._saved == (checkpoint.resolve(), json.dumps(self.state)):
            return  # nothing learned since this folder was written
        with replacing_dir(checkpoint) as tmp:
            save_policy(self.policy, self.tokenizer, tmp)
            torch.save(self.optimizer.state_dict(), tmp / OPTIMIZER_FILE)
            write_atomic(tmp / STATE_FILE, json.dumps(self.state))
        self._saved = (checkpoint.resolve(), json.dumps(self.state))

    def load(self, dir: Path) -> None:
        """The checkpoint in `dir/checkpoint`: weights, tokenizer, state and the optimizer's moments."""
        checkpoint = self._checkpoint(dir)
        self.policy = load_policy(checkpoint)
        self.tokenizer = load_tokenizer(checkpoint)
        self.state = json.loads((checkpoint / STATE_FILE).read_text())
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.lr)
        if (checkpoint / OPTIMIZER_FILE).is_file():
            self.optimizer.load_state_dict(torch.load(checkpoint / OPTIMIZER_FILE, weights_only=True))
            for group in self.optimizer.param_groups:  # the configured rate wins over the saved one
                group["lr"] = self.lr
        self._saved = (checkpoint.resolve(), json.dumps(self.state))
        self._scores: tuple[str, np.ndarray] | None = None  # the last prompt and candidates scored, and their scores

    def usage(self) -> dict:
        return dict(self.counts) | {"rounds_learned": self.state["rounds_learned"],
                                    "baseline": self.state["baseline"]}

    # ------------------------------------------------------------------ propose

    def _candidate_edits(self, scaffold_dir: Path, scaffold, specs: dict,
                         current: dict) -> list[tuple[str, KnobEdit | MoveEdit]]:
        """(text, edit) of every grid edit the scaffold accepts and every move that applies. Checked
        with `validate`, so a cross-knob rule is respected too; cached per scaffold content, which
        only a keep changes."""
        key = scaffold.content_hash
        if key not in self._candidates:
            candidates = []
            for name in sorted(specs):
                for value in value_grid(specs[name], current[name], self.grid_points):
                    edit = KnobEdit(name, value)
                    try:
                        validate(Proposal("grid point", (edit,)), scaffold_dir)
                    except ProposalError:
                        continue
                    candidates.append((candidate_text(name, value), edit))
            candidates += [(edit_text(MoveEdit(name)), MoveEdit(name)) for name in move_space(scaffold_dir)]
            self._candidates[key] = candidates
        return self._candidates[key]

    def _prompt_ids(self, evidence: Evidence, memory_text: str, room: int) -> list[int]:
        summary = f"{evidence.summary()}\n" if self.evidence else ""
        text = f"{memory_text.strip()}\n\n{summary}proposal: "
        # verbose=False: the memory may exceed the model's length before it is cut, which is expected
        ids = self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        return [self.tokenizer.bos_token_id] + ids[-(room - 1):]

    def _masked_logprobs(self, logits_V: torch.Tensor, allowed: list[int]) -> torch.Tensor:
        """Log-probabilities over `allowed` only: the model's distribution restricted and renormalized."""
        return torch.log_softmax(logits_V[allowed].float() / self.temperature, dim=-1)

    @torch.no_grad()
    def _candidate_logprobs(self, prompt_ids: list[int], sequences: list[list[int]], trie: dict) -> np.ndarray:
        """Log-probability of every candidate under the masked distribution. The prompt runs once;
        its cache is repeated over the candidates, which run in one batch, right-padded (a causal
        model never looks right, so padding changes no real position)."""
        out = self.policy(input_ids=torch.tensor([prompt_ids]), use_cache=True, logits_to_keep=1)
        first_V = out.logits[0, -1]
        cache = out.past_key_values
        cache.batch_repeat_interleave(len(sequences))
        # every sequence is at least one token of text and EOS, so each feeds at least one token
        fed = torch.full((len(sequences), max(len(s) for s in sequences) - 1), self.tokenizer.eos_token_id)
        for i, seq in enumerate(sequences):
            fed[i, :len(seq) - 1] = torch.tensor(seq[:-1])
        logits_NSV = self.policy(input_ids=fed, past_key_values=cache, use_cache=True).logits
        return np.array([float(self._trie_logprob(torch.cat([first_V[None], logits_NSV[i, :len(seq) - 1]]), seq, trie))
                         for i, seq in enumerate(sequences)])

    def propose(self, evidence: Evidence, memory_text: str, scaffold_dir: Path) -> Proposal:
        return self.propose_many(evidence, memory_text, scaffold_dir, 1)[0]

    def _offer(self, evidence: Evidence, memory_text: str, scaffold_dir: Path, rng: np.random.Generator) -> dict:
        """What a round's draws are made from: the scaffold, the candidate edits on offer and the
        probability of each (the model's masked scores plus the credit model's draw from `rng`),
        with the prompt, the sequences and the context the pending file records."""
        scaffold = load_scaffold(scaffold_dir, import_code=False)
        specs, current = scaffold_knob_space(scaffold)
        candidates = self._candidate_edits(Path(scaffold_dir), scaffold, specs, current)
        if not candidates:
            raise ResearcherExhausted("no knob edit left that the scaffold accepts, and no move applies")
        files = {name: (Path(scaffold_dir) / name).read_text()
                 for name in scaffold.surface.get("editable_files") or []}
        state_key = knob_state_key(current, files)
        tried = set(self.state.get("tried", {}).get(state_key, []))
        offered = dict(candidates)
        candidates = [c for c in candidates if c[0] not in tried] or candidates
        if self.interior_first:
            candidates = interior_first(candidates, specs, self.state.get("observations", []))
        eos = self.tokenizer.eos_token_id
        sequences = [self.tokenizer(text, add_special_tokens=False)["input_ids"] + [eos] for text, _ in candidates]
        room = min(self.context_tokens,
                   self.policy.config.max_position_embeddings - max(len(s) for s in sequences))
        prompt_ids = self._prompt_ids(evidence, memory_text, room)
        scored = hashlib.sha256(json.dumps([prompt_ids, sequences]).encode()).hexdigest()
        if self._scores is None or self._scores[0] != scored:  # a round's fills score what its proposals did
            self._scores = (scored, self._candidate_logprobs(prompt_ids, sequences, build_trie(sequences)))
        scores = self._scores[1]
        edits = [credit_edit(edit) for _, edit in candidates]
        moves = {f"{MOVE_KNOB}{name}": move for name, move in scaffold.moves.items()}
        targets = {name: target_features(move.targets) for name, move in moves.items()}
        reward_knobs, reward_moves = scaffold.reward_edits()
        reward_edits = (reward_knobs & set(specs)) | {f"{MOVE_KNOB}{name}" for name in reward_moves}
        credit = CreditModel(specs | {name: {"type": "bool", "choices": [False, True]} for name in moves},
                             targets=targets, scaled=reward_edits)
        current = current | dict.fromkeys(moves, False)  # a move on offer is not applied
        context = evidence_context(evidence) if self.evidence else blank_context()
        if self.credit_weight > 0:
            credit.fit(self.state.get("observations", []))
            scores = scores + self.credit_weight * credit.sample(edits, current, rng, context)
        probs = np.exp(scores - scores.max())
        return {"scaffold": scaffold, "current": current, "candidates": candidates, "offered": offered,
                "tried": tried, "state_key": state_key, "sequences": sequences, "prompt_ids": prompt_ids,
                "moves": moves, "targets": targets, "credit": credit, "context": context,
                "probs": probs / probs.sum()}

    def _change(self, edit: KnobEdit | MoveEdit, offer: dict) -> str:
        knob, _ = credit_edit(edit)
        return (move_hypothesis(edit.move, offer["moves"][knob].doc) if isinstance(edit, MoveEdit)
                else f"set {edit.knob} from {offer['current'][edit.knob]} to {edit.value}")

    def propose_many(self, evidence: Evidence, memory_text: str, scaffold_dir: Path, count: int) -> list[Proposal]:
        """`count` distinct edits drawn without replacement from the same scores (fewer when fewer
        are on offer); one draw is exactly what `propose` gives."""
        rng = np.random.default_rng(round_seed(self.seed, evidence.round))
        offer = self._offer(evidence, memory_text, scaffold_dir, rng)
        scaffold, current, candidates, offered, tried, state_key = (
            offer[key] for key in ("scaffold", "current", "candidates", "offered", "tried", "state_key"))
        sequences, prompt_ids, targets, credit, context, probs = (
            offer[key] for key in ("sequences", "prompt_ids", "targets", "credit", "context", "probs"))
        size = min(count, len(candidates), int(np.count_nonzero(probs)))
        choices = ([int(rng.choice(len(candidates), p=probs))] if size == 1
                   else [int(c) for c in rng.choice(len(candidates), size=size, replace=False, p=probs)])
        stacks = self._stacks(rng, choices, candidates, probs, current, offered, tried, state_key, Path(scaffold_dir),
                              target_pull(targets, context))
        picks, proposals = [], []
        for choice, stack in zip(choices, stacks):
            if stack is not None:
                choice = stack.index
            edit = candidates[choice][1]
            knob, _ = credit_edit(edit)
            hypothesis = self._hypothesis(evidence, edit, self._change(edit, offer), current[knob], credit, context)
            pick = {"choice": choice, "old_value": current[knob]}
            if stack is None:
                proposal = Proposal(hypothesis, (edit,))
            else:
                how = (f"refine the near miss {stack.miss.describe()}, {knob} at another value"
                       if stack.refines else f"stack onto the near miss {stack.miss.describe()}")
                proposal = Proposal(f"{how}: {hypothesis}", (*(offered[e["text"]] for e in stack.kept), edit))
                pick |= {"stacked": list(stack.kept), "onto": list(stack.miss.texts),
                         "text": stack.text(candidates[choice][0])}
            picks.append({"proposal": proposal.to_dict()} | pick)
            proposals.append(proposal)
            self.counts["generated_tokens"] += len(sequences[choice])
        if self.companions:
            for pick, proposal in list(zip(picks, proposals)):
                for companion in decoder_companions(proposal, scaffold):
                    picks.append(companion_pick(pick, companion, candidates[pick["choice"]], current))
                    proposals.append(companion)
        self.counts["proposals"] += len(picks)
        self.counts["prompt_tokens"] += len(prompt_ids)
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.pending_file, json.dumps({
            "round": evidence.round, "picks": picks, "state": state_key, "prompt_ids": prompt_ids,
            "candidates": [t for t, _ in candidates], "sequences": sequences, "context": context}))
        return proposals

    def propose_fills(self, evidence: Evidence, memory_text: str, scaffold_dir: Path, count: int,
                      taken: list[Proposal]) -> list[Proposal]:
        """Up to `count` more edits of one sampling knob each, drawn without replacement from the same
        scores restricted to them (with the round's stream of fills), none of them one of `taken`;
        added to the round's pending picks, so each is learned from as the round's others are."""
        if count < 1 or not self.pending_file.is_file():
            return []
        pending = json.loads(self.pending_file.read_text())
        rng = np.random.default_rng(round_seed(self.seed, evidence.round, FILL_STREAM))
        offer = self._offer(evidence, memory_text, scaffold_dir, rng)
        candidates, current = offer["candidates"], offer["current"]
        if pending.get("round") != evidence.round or pending.get("candidates") != [t for t, _ in candidates]:
            raise ValueError(f"the local researcher's pending proposals are not round {evidence.round}'s: "
                             "fills are drawn after the round's proposals, from the same candidates")
        edits = {p.edits_key for p in taken}
        allowed = np.array([sets_sampling(edit) and Proposal("", (edit,)).edits_key not in edits
                            for _, edit in candidates])
        probs = np.where(allowed, offer["probs"], 0.0)
        size = min(count, int(np.count_nonzero(probs)))
        if size == 0:
            return []
        choices = [int(c) for c in rng.choice(len(candidates), size=size, replace=False, p=probs / probs.sum())]
        fills = []
        for choice in choices:
            edit = candidates[choice][1]
            hypothesis = self._hypothesis(evidence, edit, self._change(edit, offer), current[edit.knob],
                                          offer["credit"], offer["context"])
            fills.append(Proposal(hypothesis + FILL_NOTE, (edit,)))
            pending["picks"].append({"proposal": fills[-1].to_dict(), "choice": choice,
                                     "old_value": current[edit.knob]})
            self.counts["generated_tokens"] += len(offer["sequences"][choice])
        self.counts["proposals"] += len(fills)
        write_atomic(self.pending_file, json.dumps(pending))
        return fills

    def _stacks(self, rng: np.random.Generator, choices: list[int], candidates: list[tuple[str, KnobEdit | MoveEdit]],
                probs: np.ndarray, current: dict, offered: dict[str, KnobEdit | MoveEdit], tried: set[str],
                state_key: str, scaffold_dir: Path, pull: dict[str, float]) -> list[StackPick | None]:
        """Per choice, with probability `stack` times `stack_chance` when there is a near miss against
        this incumbent (`state_key`), the near miss to add an edit to (that edit takes the choice's
        place, its knob drawn with the evidence's `pull`), else None. A stack the scaffold rejects,
        or one tried already against this incumbent, leaves the choice alone."""
        observations = measured_on(self.state.get("observations", []), state_key)
        misses = near_misses(observations, current, set(offered), by_cut=self.evidence) if self.stack > 0 else []
        if not misses:
            return [None] * len(choices)
        keyed = [(text, credit_edit(edit)[0]) for text, edit in candidates]
        chance = self.stack * stack_chance(misses)
        taken: set[tuple[tuple[str, ...], str, str]] = set()
        stacks: list[StackPick | None] = []
        for _ in choices:
            stack = pick_stack(rng, misses, keyed, probs, observations, taken, pull) if rng.random() < chance else None
            if stack is not None:
                text, edit = candidates[stack.index]
                try:
                    validate(Proposal("stack", (*(offered[e["text"]] for e in stack.kept), edit)), scaffold_dir)
                except ProposalError:
                    stack = None
                else:
                    stack = None if stack.text(text) in tried else stack
            if stack is not None:
                text, knob = keyed[stack.index]
                taken.add((stack.miss.texts, knob, text))
            stacks.append(stack)
        return stacks

    def _hypothesis(self, evidence: Evidence, edit: KnobEdit | MoveEdit, change: str, old: Any,
                    credit: CreditModel, context: dict[str, float]) -> str:
        knob, value = credit_edit(edit)
        seen = credit.counts.get(knob, 0)
        if seen:
            mean, sd = (float(x[0]) for x in credit.predict([(knob, value)], {knob: old}, context))
            what = "move" if isinstance(edit, MoveEdit) else "knob"
            change += (f" (the credit model, from {seen} earlier round{'s' if seen > 1 else ''} on this {what}, "
                       f"expects {mean:+.3f} +/- {sd:.3f})")
        if not self.evidence:
            return f"{change}; chosen without the evidence (evidence: false)"
        if evidence.failures:
            category, group = next(iter(evidence.failures.items()))
            return (f"{change}; the incumbent's most common failure is {category} ({group['count']} cases), "
                    f"and this may reduce it")
        return f"{change}; the incumbent shows no failure category, so look for accuracy elsewhere"

    # ------------------------------------------------------------------ learn

    def _pending_pick(self, proposal: Proposal) -> tuple[dict, int, dict]:
        """The pending proposals, and which of them (index and pick) `proposal` is. A pending file
        from before several candidates a round holds one pick at its top level."""
        if not self.pending_file.is_file():
            raise ValueError("the local researcher has no pending proposal to learn from")
        pending = json.loads(self.pending_file.read_text())
        picks = pending.get("picks") or [{key: pending[key] for key in ("proposal", "choice", "old_value")
                                          if key in pending}]
        for index, pick in enumerate(picks):
            if pick["proposal"]["edits"] == proposal.to_dict()["edits"]:
                return pending, index, pick
        raise ValueError(f"learn() got a proposal the local researcher did not make in round {pending['round']}: "
                         f"{proposal.to_json()}")

    def _sequence_logprob(self, prompt_ids: list[int], sequence: list[int], trie: dict) -> torch.Tensor:
        """Log-probability of `sequence` under the masked distribution, with gradients."""
        ids = torch.tensor([prompt_ids + sequence[:-1]])
        logits_SV = self.policy(input_ids=ids, logits_to_keep=len(sequence)).logits[0]
        return self._trie_logprob(logits_SV, sequence, trie)

    def _trie_logprob(self, logits_SV: torch.Tensor, sequence: list[int], trie: dict) -> torch.Tensor:
        """The masked log-probability of `sequence`, where `logits_SV[j]` predicts `sequence[j]`:
        summed over the trie's branch points (a forced token has probability 1 and no gradient)."""
        total, node = logits_SV.new_zeros(()), trie
        for logits_V, token in zip(logits_SV, sequence):
            allowed = sorted(node)
            if len(allowed) > 1:
                total = total + self._masked_logprobs(logits_V, allowed)[allowed.index(token)]
            node = node[token]
        return total

    def log_prob(self, proposal: Proposal) -> float:
        """Log-probability that the current weights propose `proposal`'s edit from the last prompt."""
        pending = json.loads(self.pending_file.read_text())
        sequence = pending["sequences"][pending["candidates"].index(edit_text(proposal.edits[-1]))]
        with torch.no_grad():
            return float(self._sequence_logprob(pending["prompt_ids"], sequence, build_trie(pending["sequences"])))

    def reward(self, verdict: dict) -> float:
        if verdict["decision"] == "keep":
            return 1.0
        if verdict.get("delta") is None:  # the candidate failed to run
            return -1.0
        return float(np.clip(verdict["delta"] * self.reward_scale, -1.0, 1.0))

    def learn(self, proposal: Proposal, verdict: dict) -> None:
        """One REINFORCE step for one pending proposal of its round (in memory: `save` writes it).
        Call it once per candidate with its final verdict; a second call for the same candidate (a
        resume) does nothing."""
        pending, index, pick = self._pending_pick(proposal)
        learned = self.state.get("learned_in_round", [0])  # a state from before: its one pick
        if pending["round"] < self.state["last_learned_round"] or (
                pending["round"] == self.state["last_learned_round"] and index in learned):
            return
        self._scores = None  # the weights change
        reward = self.reward(verdict)
        advantage = reward - self.state["baseline"]
        logprob = self._sequence_logprob(pending["prompt_ids"], pending["sequences"][pick["choice"]],
                                         build_trie(pending["sequences"]))
        if logprob.requires_grad:  # a single remaining candidate was forced: there was no choice to learn
            self.optimizer.zero_grad()
            (-advantage * logprob).backward()
            self.optimizer.step()
        n = self.state["rounds_learned"]
        tried = dict(self.state.get("tried", {}))
        key = pending.get("state", "")
        text = pending["candidates"][pick["choice"]]
        tried[key] = [*tried.get(key, []), pick.get("text", text)]
        observations = list(self.state.get("observations", []))
        if "old_value" in pick:  # a proposal pending from before the credit model has none
            knob, value = credit_edit(proposal.edits[-1])
            changes = verdict.get("metric_deltas") or {}
            rates = {rate: changes[rate] for rate in RATES if rate in changes}
            observations.append(edit_record(knob, pick["old_value"], value, pick.get("last_text", text)) | {
                "delta": verdict.get("delta"), "ci95": verdict.get("ci95"), "context": pending.get("context"),
                "round": pending["round"], "decision": verdict.get("decision"), "state": key}
                | ({"rates": rates} if rates else {}) | {key: pick[key] for key in ("stacked", "onto") if pick.get(key)})
        same_round = pending["round"] == self.state["last_learned_round"]
        self.state = {"baseline": (self.state["baseline"] * n + reward) / (n + 1), "rounds_learned": n + 1,
                      "last_learned_round": pending["round"], "tried": tried, "observations": observations,
                      "learned_in_round": [*(learned if same_round else []), index]}
        self.counts["learn_steps"] += 1
