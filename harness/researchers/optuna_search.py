"""Classical search baselines through Optuna's ask-and-tell API: `tpe` and `cmaes`.

Every round asks the study for one trial (K at once for K candidates) over the scaffold's whole
knob space (floats, log floats, ints and choices from the surface) and its code moves (each a
categorical parameter `move:NAME` in [off, on]), and proposes the trial's difference from the incumbent: every knob whose
sampled value differs, and every move that is on, applies now and so is not yet applied (of two
that is on but clash, as two prompt variants do, the first declared). A move that is off is never
undone: moves only add code. The round's verdict tells the trial its measured accuracy (the incumbent's
accuracy when it was proposed plus the paired delta); a round that failed, or a proposal the
scaffold rejects, is told as a failed trial.

The study lives in the campaign folder (`researcher/optuna.db`, its own sqlite), with the round
each trial was asked for as a trial attribute, so a kill -9 loses nothing: a resumed round finds
its trials still running and proposes them again, and a round whose trials were already told is
not told twice.

    researcher start name=tpe-s0 researcher=tpe seed=0
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from harness.analyze import Evidence
from harness.config import RESEARCHERS, CMAESOptions, TPEOptions, parse_config
from harness.proposal import KnobEdit, MoveEdit, Proposal, ProposalError, validate
from harness.researchers.base import Researcher, ResearcherExhausted, knob_space, move_space, same_value, short_float
from rl_pipeline.scaffold import load_scaffold
from rl_pipeline.files import write_atomic

STUDY = "campaign"
ROUND_ATTR = "round"
INCUMBENT_ATTR = "incumbent_accuracy"
# Trials the scaffold rejects (a cross-knob rule) or that change nothing are asked again, this often.
MAX_ASKS = 50
DIGITS = 4  # significant digits of a sampled float, as the random baseline writes them
MOVE_PREFIX = "move:"  # a move's parameter name: move:reward_partial_credit


def distributions(specs: dict[str, dict], moves: list[str] = ()) -> dict:
    """Optuna distributions of the surface's searchable knobs and of every declared move (off/on;
    all of them, applied or not, so the space stays the same from round to round)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = {f"{MOVE_PREFIX}{name}": CategoricalDistribution([False, True]) for name in moves}
    for name, spec in sorted(specs.items()):
        if "choices" in spec:
            out[name] = CategoricalDistribution(list(spec["choices"]))
        elif spec["type"] == "int":
            out[name] = IntDistribution(math.ceil(spec["min"]), math.floor(spec["max"]), log=bool(spec.get("log")))
        else:
            out[name] = FloatDistribution(float(spec["min"]), float(spec["max"]), log=bool(spec.get("log")))
    return out


def _readable(value, spec: dict):
    """A sampled float as a short number inside its range; anything else as it is."""
    if isinstance(value, float) and "choices" not in spec and spec["type"] == "float":
        return min(max(short_float(value, DIGITS), spec["min"]), spec["max"])
    return value


class OptunaResearcher(Researcher):
    """A knob-search baseline driven by an Optuna sampler; `sampler` is "tpe" or "cmaes"."""

    def __init__(self, config: dict, *, campaign_dir: Path, seed: int, base_model: str):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if config.get("name") not in RESEARCHERS or RESEARCHERS[config["name"]] not in (TPEOptions, CMAESOptions):
            raise ValueError(f"unknown Optuna sampler {config.get('name')!r}; choose tpe or cmaes")
        options = parse_config(RESEARCHERS[config["name"]], config, "researcher")  # options and defaults: the schema
        self.name = options.name
        self.seed = seed
        self.dir = Path(campaign_dir) / "researcher"
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.name == "tpe":
            sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=options.n_startup_trials)
        else:
            sampler = optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=options.n_startup_trials,
                                                   warn_independent_sampling=False)
        storage = optuna.storages.RDBStorage(f"sqlite:///{(self.dir / 'optuna.db').resolve()}")
        self.study = optuna.create_study(study_name=STUDY, storage=storage, sampler=sampler,
                                         direction="maximize", load_if_exists=True)
        self.pending_file = self.dir / "pending.json"

    # ------------------------------------------------------------------ propose

    def propose(self, evidence: Evidence, memory_text: str, scaffold_dir: Path) -> Proposal:
        return self.propose_many(evidence, memory_text, scaffold_dir, 1)[0]

    def propose_many(self, evidence: Evidence, memory_text: str, scaffold_dir: Path, count: int) -> list[Proposal]:
        """`count` trials asked at once, as distinct proposals; a resumed round gets the trials it
        asked before (still running) again, and asks only for what is missing."""
        from optuna.trial import TrialState

        specs, current = knob_space(scaffold_dir)
        declared = list(load_scaffold(scaffold_dir, import_code=False).moves)
        if not specs and not declared:
            raise ResearcherExhausted("the surface has no searchable knob and the scaffold no code move")
        space = distributions(specs, declared)
        available = move_space(scaffold_dir)
        chosen: dict[str, tuple[Proposal, int]] = {}  # proposal json -> (proposal, trial number)
        for asked in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            proposal = (self._proposal(asked.params, specs, current, available, scaffold_dir)
                        if asked.user_attrs.get(ROUND_ATTR) == evidence.round else None)
            if proposal is not None and len(chosen) < count and proposal.to_json() not in chosen:
                chosen[proposal.to_json()] = (proposal, asked.number)
        for _ in range(MAX_ASKS * count):
            if len(chosen) == count:
                break
            trial = self.study.ask(space)
            trial.set_user_attr(ROUND_ATTR, evidence.round)
            trial.set_user_attr(INCUMBENT_ATTR, evidence.incumbent_accuracy)
            proposal = self._proposal(trial.params, specs, current, available, scaffold_dir)
            if proposal is None:  # the incumbent itself: its score is known
                self.study.tell(trial, evidence.incumbent_accuracy)
                continue
            try:
                validate(proposal, scaffold_dir)
            except ProposalError:
                self.study.tell(trial, state=TrialState.FAIL)
                continue
            if proposal.to_json() in chosen:  # another candidate of this round already: nothing new to score
                self.study.tell(trial, state=TrialState.FAIL)
                continue
            chosen[proposal.to_json()] = (proposal, trial.number)
        if not chosen:
            raise ResearcherExhausted(f"no valid trial in {MAX_ASKS} asks for round {evidence.round}")
        write_atomic(self.pending_file, json.dumps({"round": evidence.round,
                                                    "trials": [[key, number] for key, (_, number) in chosen.items()]}))
        return [proposal for proposal, _ in chosen.values()]

    @staticmethod
    def _composes(moves: list[MoveEdit], scaffold_dir: Path) -> bool:
        """Whether these moves apply together (two prompt variants rewrite the same line: they do not)."""
        try:
            validate(Proposal("moves", tuple(moves)), scaffold_dir)
        except ProposalError:
            return False
        return True

    def _proposal(self, params: dict, specs: dict, current: dict, available: dict,
                  scaffold_dir: Path) -> Proposal | None:
        knobs = {name: value for name, value in params.items() if not name.startswith(MOVE_PREFIX)}
        edits = [KnobEdit(name, _readable(value, specs[name])) for name, value in sorted(knobs.items())
                 if not same_value(_readable(value, specs[name]), current.get(name))]
        changes = [f"{e.knob} {current.get(e.knob)} -> {e.value}" for e in edits]
        moves: list[MoveEdit] = []
        for name in available:  # declaration order; a move that clashes with an earlier one is left out
            if params.get(f"{MOVE_PREFIX}{name}") and self._composes([*moves, MoveEdit(name)], scaffold_dir):
                moves.append(MoveEdit(name))
                changes.append(f"move {name}")
        edits += moves
        if not edits:
            return None
        return Proposal(f"{self.name} trial: {', '.join(changes)}", tuple(edits))

    # ------------------------------------------------------------------ learn

    def learn(self, proposal: Proposal, verdict: dict) -> None:
        """Tell the round's trial what it scored; a trial already told (a replay) is left alone."""
        from optuna.trial import TrialState

        if not self.pending_file.is_file():
            return
        pending = json.loads(self.pending_file.read_text())
        # {"trial": n} was written before several candidates a round existed
        number = pending["trial"] if "trial" in pending else dict(pending["trials"]).get(proposal.to_json())
        if number is None:
            return
        trial = self.study.get_trials(deepcopy=False)[number]
        if trial.state != TrialState.RUNNING:
            return
        if verdict.get("delta") is None:
            self.study.tell(number, state=TrialState.FAIL)
        else:
            self.study.tell(number, trial.user_attrs[INCUMBENT_ATTR] + verdict["delta"])

    def usage(self) -> dict:
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        return {"trials": len(trials), "complete": sum(t.state == TrialState.COMPLETE for t in trials),
                "failed": sum(t.state == TrialState.FAIL for t in trials)}
