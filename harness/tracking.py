"""MLflow tracking of a campaign: one parent run per campaign, one child run per round (per
candidate, in a round of several).

The parent run holds the whole config (flattened as params, and as `config.json`), the campaign's
progress metrics (step = round; `false_keeps` counts the keeps whose held-out change was not
positive, so far) and the progress plot. Each round is a child run with its knobs as params, its
scores as metrics (a keep's held-out score and change as `heldout/accuracy` and `heldout/delta`),
its decision, status, commits and, for a keep, `false_keep` as tags, and `diff.patch`,
`proposal.json`, `verdict.json`, `critique.md` and `memory.md` as artifacts. MLflow's artifact
viewer does not preview `.patch` files, so the diff is also logged as `diff.md` (a fenced `diff`
block, which it renders) and shown in the run's description, under its hypothesis and verdict;
`diff.patch` stays the file to `git apply`.

Every call is idempotent, so a campaign resumed after a crash re-logs its last round without
creating a duplicate: the parent is found again by a stored run id, else by its `campaign_id` tag (a
campaign folder's own id, so a new campaign that reuses a deleted one's name gets its own run), a
child by its parent and `round` (and `candidate`) tag. Tracking never stops a campaign: a failing call logs a warning and
returns None (`strict=True` re-raises, for tests). `NullTracker` has the same methods and does
nothing, so the loop never branches on whether tracking is on.

    tracker = make_tracker(enabled=True, runs_dir="runs")   # sqlite:///<abs>/runs/mlflow.db
    tracker.start_campaign("arith-100", config)
    tracker.log_round(1, proposal=..., result=..., verdict=..., critique=..., diff=...,
                      commits={"candidate": sha, "incumbent": sha}, memory_snapshot=memory_md)
    tracker.log_campaign_progress(history, "runs/arith-100/progress.png")
    tracker.end_campaign("finished")
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import re
from pathlib import Path

from rl_pipeline.files import file_lock

log = logging.getLogger(__name__)

EXPERIMENT = "agentic-researcher"
# MLflow's own limits (mlflow/utils/validation.py): longer values are rejected or truncated.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
PARAMS_TAGS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"  # shown as the run's description in the MLflow UI


def default_tracking_uri(runs_dir: str | Path = "runs") -> str:
    """`MLFLOW_TRACKING_URI` when set, else the sqlite store `<runs_dir>/mlflow.db` (absolute)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(Path(runs_dir) / 'mlflow.db').resolve()}"


def make_tracker(enabled: bool, tracking_uri: str | None = None, *, runs_dir: str | Path = "runs",
                 experiment: str = EXPERIMENT) -> MlflowTracker | NullTracker:
    """The MLflow tracker when `enabled`, else the do-nothing stand-in."""
    if not enabled:
        return NullTracker()
    return MlflowTracker(tracking_uri or default_tracking_uri(runs_dir), experiment)


# ---------------------------------------------------------------- keys, values and flattening

def sanitize_key(key: str) -> str:
    """Map a name onto what MLflow accepts for params, metrics and tags.

    MLflow allows alphanumerics, `_ - . /` and spaces (colons only off Windows, so we drop them),
    and rejects names that are not already normalized paths (`a//b`, `./a`, `a/..`).
    """
    key = re.sub(r"[^\w.\- /]", "_", str(key))
    parts = ["_" if part in (".", "..") else part for part in key.split("/") if part]
    return "/".join(parts)[:MAX_KEY] or "_"


def flatten(data: dict, prefix: str = "") -> dict[str, object]:
    """Nested dicts to one level with dotted keys; lists and other leaves stay as they are."""
    flat = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat |= flatten(value, name + ".")
        else:
            flat[name] = value
    return flat


def diff_markdown(diff: str) -> str:
    """`diff` as a fenced markdown `diff` block, with a fence no line of the diff can close."""
    longest = max((len(run) for run in re.findall(r"`+", diff)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}diff\n{diff.rstrip(chr(10))}\n{fence}\n"


def round_description(proposal: dict, verdict: dict, diff: str, approval: dict | None = None,
                      limit: int = MAX_TAG_VALUE) -> str:
    """A round run's description (markdown): hypothesis, verdict, a person's approval or rejection
    and the diff, within `limit` characters; a diff too long for it is cut at a line, saying where
    the rest is."""
    head = f"{proposal.get('hypothesis', '')}\n\n{verdict.get('reason', '')}".strip()
    if approval and not str(approval.get("who", "")).startswith("policy:"):
        note = f": {approval['note']}" if approval.get("note") else ""
        head += (f"\n\n**Approval:** {approval.get('decision')} of the {approval.get('point')} by "
                 f"{approval.get('who')}{note}")
    if not diff:
        return head[:limit]
    text = f"{head}\n\n**Diff**\n\n{diff_markdown(diff)}"
    if len(text) <= limit:
        return text
    lines = diff.rstrip("\n").split("\n")
    room = limit - len(f"{head}\n\n**Diff**\n\n{diff_markdown('')}") - len(_cut_note(len(lines)))
    kept, used = [], 0
    for line in lines:
        used += len(line) + 1
        if used > room:
            break
        kept.append(line)
    text = f"{head}\n\n**Diff**\n\n{diff_markdown(chr(10).join(kept))}{_cut_note(len(lines) - len(kept))}"
    return text if len(text) <= limit else head[:limit]


def _cut_note(lines: int) -> str:
    return f"\n_{lines} more lines in `diff.md` and `diff.patch`._\n"


def _param_value(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:MAX_PARAM_VALUE]


def numeric_metrics(data: dict | None, prefix: str = "") -> dict[str, float]:
    """The numbers in a metrics dict: a `[lo, hi]` pair becomes `_lo`/`_hi`, a dict a `/` group."""
    metrics = {}
    for key, value in (data or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            metrics |= numeric_metrics(value, name + "/")
        elif isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value):
            metrics[name + "_lo"], metrics[name + "_hi"] = float(value[0]), float(value[1])
        elif _is_number(value):
            metrics[name] = float(value)
    return metrics


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _heldout_metrics(heldout: dict) -> dict[str, float]:
    """A keep's held-out score and change as round metrics (`heldout/accuracy`, `heldout/delta`, and
    `heldout/delta_by_train_seed/T` for each training seed it was averaged over)."""
    return numeric_metrics({"accuracy": heldout.get("heldout_accuracy"), "delta": heldout.get("heldout_delta"),
                            "delta_by_train_seed": heldout.get("heldout_by_train_seed") or {}}, "heldout/")


def _heldout_tags(heldout: dict) -> dict[str, str]:
    return {"false_keep": str(heldout["false_keep"]).lower()} if heldout.get("false_keep") is not None else {}


def _guarded(method):
    """Run a tracking call; on failure warn and return None, because tracking must never end a campaign."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any store, network or disk error
            if self.strict:
                raise
            log.warning("MLflow tracking: %s failed (%s: %s); the campaign goes on without it",
                        method.__name__, type(error).__name__, error)
            return None
    return wrapper


# ---------------------------------------------------------------- the tracker

class MlflowTracker:
    """Logs a campaign to an MLflow store through `MlflowClient` (explicit run ids, no active-run state)."""

    def __init__(self, tracking_uri: str | None, experiment: str = EXPERIMENT, *, strict: bool = False):
        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.experiment = experiment
        self.strict = strict
        self.campaign: str | None = None
        self.run_id: str | None = None
        self._client = None
        self._experiment_id: str | None = None

    # -------- store access, opened lazily so a broken store costs nothing until the first call

    @property
    def _mlflow(self):
        if self._client is None:
            from mlflow import MlflowClient  # imported here: mlflow takes seconds to import

            if self.tracking_uri.startswith("sqlite:///"):
                Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            with self._store_lock():  # the store's first touch creates and migrates its tables
                client = MlflowClient(self.tracking_uri)
                client.search_experiments(max_results=1)
            self._client = client
        return self._client

    def _experiment(self) -> str:
        if self._experiment_id is None:
            client = self._mlflow  # opened first: it takes the store lock itself, which is not re-entrant
            with self._store_lock():
                found = client.get_experiment_by_name(self.experiment)
                if found is not None:
                    self._experiment_id = found.experiment_id
                else:
                    self._experiment_id = client.create_experiment(self.experiment,
                                                                   artifact_location=self._artifact_root())
        return self._experiment_id

    @contextlib.contextmanager
    def _store_lock(self):
        """Serialize the first touches of a sqlite store: two campaigns starting together would
        otherwise race in MLflow's schema migration (seen: 'Online migration expected to match one
        row'), and one of them would lose its tracking."""
        if not self.tracking_uri.startswith("sqlite:///"):
            yield
            return
        with file_lock(self.tracking_uri.removeprefix("sqlite:///") + ".lock"):
            yield

    def _artifact_root(self) -> str | None:
        # MLflow's default for a sqlite store is ./mlruns under whatever folder the process runs in;
        # keep the artifacts next to the database instead. A server picks its own location.
        if self.tracking_uri.startswith("sqlite:///"):
            return (Path(self.tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
        return None

    def _stored_run(self, run_id: str):
        """The run a journal remembered, or None when the store no longer has it (deleted, other store)."""
        from mlflow.exceptions import MlflowException

        try:
            run = self._mlflow.get_run(run_id)
        except MlflowException:
            return None
        return run if run.info.lifecycle_stage == "active" else None

    def _find(self, filter_string: str):
        runs = self._mlflow.search_runs([self._experiment()], filter_string, max_results=1,
                                        order_by=["attributes.start_time DESC"])
        return runs[0] if runs else None

    def _log_batch(self, run_id: str, metrics: list[tuple[str, float, int]] = (), params: dict | None = None,
                   tags: dict | None = None) -> None:
        """Log (key, value, step) metrics, params and tags in as few calls as MLflow's batch limits allow."""
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.utils.time import get_current_time_millis

        now = get_current_time_millis()
        metric_rows = [Metric(sanitize_key(k), float(v), now, step) for k, v, step in metrics]
        param_rows = [Param(sanitize_key(k), _param_value(v)) for k, v in (params or {}).items()]
        tag_rows = [RunTag(sanitize_key(k), str(v)[:MAX_TAG_VALUE]) for k, v in (tags or {}).items()]
        for i in range(0, len(metric_rows), METRICS_PER_BATCH):
            self._mlflow.log_batch(run_id, metrics=metric_rows[i:i + METRICS_PER_BATCH])
        for i in range(0, max(len(param_rows), len(tag_rows)), PARAMS_TAGS_PER_BATCH):
            self._mlflow.log_batch(run_id, params=param_rows[i:i + PARAMS_TAGS_PER_BATCH],
                                   tags=tag_rows[i:i + PARAMS_TAGS_PER_BATCH])

    # -------- the campaign (parent run)

    @_guarded
    def start_campaign(self, name: str, config: dict, run_id: str | None = None,
                       campaign_id: str | None = None) -> str | None:
        """Create the campaign's parent run, or reopen it on resume: by `run_id`, else by the
        `campaign_id` tag, else (no id given) by the `campaign` name tag."""
        run = self._stored_run(run_id) if run_id else None
        if run is None:
            key, value = ("campaign_id", campaign_id) if campaign_id else ("campaign", name)
            run = self._find(f"tags.{key} = '{value}' AND tags.role = 'campaign'")
        tags = {"campaign": name, "role": "campaign"} | ({"campaign_id": campaign_id} if campaign_id else {})
        if run is None:
            run = self._mlflow.create_run(self._experiment(), run_name=name, tags=tags)
        else:
            self._mlflow.update_run(run.info.run_id, status="RUNNING")
            if campaign_id and run.data.tags.get("campaign_id") != campaign_id:  # a run from before ids
                self._mlflow.set_tag(run.info.run_id, "campaign_id", campaign_id)
        self.campaign, self.run_id = name, run.info.run_id

        # Params cannot change once logged: on resume keep the first values and say which differ.
        params = {sanitize_key(k): _param_value(v) for k, v in flatten(config).items()}
        logged = run.data.params
        changed = sorted(k for k in params if k in logged and logged[k] != params[k])
        if changed:
            log.warning("MLflow tracking: config keys changed since the campaign started, params keep "
                        "their first values (config.json has the new ones): %s", ", ".join(changed))
        self._log_batch(self.run_id, params={k: v for k, v in params.items() if k not in logged})
        self._mlflow.log_text(self.run_id, json.dumps(config, indent=2, default=str), "config.json")
        return self.run_id

    @_guarded
    def log_campaign_progress(self, history: list[dict], plot_path: str | Path | None = None) -> None:
        """Per-round incumbent, candidate and held-out accuracy, a keep's held-out change and the count
        of false keeps so far on the parent (step = round), and the plot.

        `history` is the whole campaign so far; rounds already logged are skipped, so calling this
        every round writes each step once.
        """
        run_id = self._require_campaign()
        # Every row has an incumbent score, so its steps say which rounds are already logged; a keep
        # scored on held-out after its round was (beside the next round) has its held-out columns late.
        done, held = ({m.step for m in self._mlflow.get_metric_history(run_id, name)}
                      for name in ("incumbent_accuracy", "heldout_accuracy"))
        columns = {"incumbent_accuracy": "incumbent_accuracy", "candidate_accuracy": "accuracy",
                   "heldout_accuracy": "heldout_accuracy", "heldout_delta": "heldout_delta"}
        late = ("heldout_accuracy", "heldout_delta")
        metrics, false_keeps = [], 0
        for row in sorted(history, key=lambda r: r["round"]):
            false_keeps += bool(row.get("false_keep"))
            if row["round"] not in done:
                names = columns
            elif row["round"] not in held and _is_number(row.get("heldout_accuracy")):
                names = {name: columns[name] for name in late}
            else:
                continue
            metrics += [(name, row[key], row["round"]) for name, key in names.items() if _is_number(row.get(key))]
            metrics.append(("false_keeps", false_keeps, row["round"]))
        self._log_batch(run_id, metrics)
        if plot_path is not None and Path(plot_path).exists():
            self._mlflow.log_artifact(run_id, str(plot_path))

    @_guarded
    def end_campaign(self, status: str = "FINISHED") -> None:
        """Close the parent run: FINISHED, FAILED or KILLED (any case)."""
        self._mlflow.set_terminated(self._require_campaign(), status=status.upper())

    def _require_campaign(self) -> str:
        if self.run_id is None:
            raise RuntimeError("no campaign run: start_campaign did not run or failed")
        return self.run_id

    # -------- one round (child run)

    @_guarded
    def log_round(self, round_no: int, *, proposal: dict, result: dict | None, verdict: dict | None,
                  critique: str, diff: str, commits: dict, memory_snapshot: str,
                  approval: dict | None = None, heldout: dict | None = None,
                  extra_metrics: dict | None = None, candidate: int | None = None) -> str | None:
        """Log one round (candidate `candidate` of a round of several) as a child run of the campaign;
        logging the same round again updates it. `heldout` is a keep's held-out record
        ({"heldout_accuracy", "heldout_delta", "false_keep"})."""
        parent = self._require_campaign()
        result, verdict = result or {}, verdict or {}
        params = result.get("knobs") or {e["knob"]: e["value"] for e in proposal.get("edits", []) if "knob" in e}
        params = {sanitize_key(k): _param_value(v) for k, v in params.items()}
        run_id = self._round_run(parent, round_no, params, candidate)

        metrics = numeric_metrics(result.get("metrics"))
        metrics |= numeric_metrics((result.get("heldout") or {}).get("metrics"), "heldout/")
        metrics |= numeric_metrics({"delta": verdict.get("delta"), "delta_ci95": verdict.get("ci95")})
        metrics |= numeric_metrics(verdict.get("metric_deltas"), "delta/")
        metrics |= numeric_metrics(result.get("timings"), "time/")
        heldout = heldout or {}
        metrics |= _heldout_metrics(heldout)
        metrics |= numeric_metrics(extra_metrics)

        tags = {"decision": verdict.get("decision", "failed" if result.get("status") != "ok" else "none"),
                "status": result.get("status", "not_run"),
                "hypothesis": proposal.get("hypothesis", ""),
                NOTE_TAG: round_description(proposal, verdict, diff, approval)}
        moves = [e["move"] for e in proposal.get("edits", []) if "move" in e]
        if moves:  # the code moves the round applied; the diff artifact shows their patches
            tags["moves"] = ", ".join(moves)
        tags |= _heldout_tags(heldout)
        if verdict.get("reason"):
            tags["reason"] = verdict["reason"]
        if result.get("reason"):
            tags["failure_reason"] = result["reason"]
        tags |= {f"commit.{k}": v for k, v in commits.items() if v}
        tags |= {f"approval.{k}": v for k, v in (approval or {}).items() if v is not None}

        self._log_batch(run_id, [(k, v, round_no) for k, v in metrics.items()], params, tags)
        self._mlflow.log_dict(run_id, proposal, "proposal.json")
        if verdict:
            self._mlflow.log_dict(run_id, verdict, "verdict.json")
        patch = diff if not diff or diff.endswith("\n") else diff + "\n"  # git apply wants the last newline
        for text, artifact in ((patch, "diff.patch"), (diff and diff_markdown(diff), "diff.md"),
                               (critique, "critique.md"), (memory_snapshot, "memory.md")):
            if text:
                self._mlflow.log_text(run_id, text, artifact)
        self._mlflow.set_terminated(run_id, status="FINISHED")
        return run_id

    @_guarded
    def log_heldout(self, round_no: int, heldout: dict, candidate: int | None = None) -> str | None:
        """A keep's held-out record scored after its round was logged (beside the next round), on the
        round's child run (its chosen candidate's): the metrics and the `false_keep` tag `log_round`
        gives a keep scored in place, per training seed too."""
        run = self._find_round(self._require_campaign(), round_no, candidate)
        if run is None:
            return None
        self._log_batch(run.info.run_id, [(k, v, round_no) for k, v in _heldout_metrics(heldout).items()],
                        tags=_heldout_tags(heldout))
        return run.info.run_id

    def _find_round(self, parent: str, round_no: int, candidate: int | None = None):
        """The child run of a round (or of one of its candidates), None when there is none."""
        which = f" AND tags.candidate = '{candidate}'" if candidate is not None else ""
        return self._find(f"tags.`{PARENT_TAG}` = '{parent}' AND tags.round = '{round_no}'{which}")

    def _round_run(self, parent: str, round_no: int, params: dict[str, str], candidate: int | None = None) -> str:
        """The child run of a round (or of one candidate): the existing one when its params agree,
        else a fresh one.

        A round re-run after a crash normally has the same knobs, so its run is reused. Params
        cannot be overwritten in MLflow, so a round that came back with other knobs replaces its
        old run (deleted, not duplicated).
        """
        run = self._find_round(parent, round_no, candidate)
        if run is not None:
            logged = run.data.params
            if all(logged.get(k, v) == v for k, v in params.items()):
                return run.info.run_id
            self._mlflow.delete_run(run.info.run_id)
        tags = {PARENT_TAG: parent, "campaign": self.campaign, "round": str(round_no)}
        name = f"round-{round_no:03d}"
        if candidate is not None:
            tags["candidate"], name = str(candidate), f"{name}-{candidate}"
        return self._mlflow.create_run(self._experiment(), run_name=name, tags=tags).info.run_id


class NullTracker:
    """Tracking turned off: the same methods as `MlflowTracker`, doing nothing."""

    def start_campaign(self, name: str, config: dict, run_id: str | None = None,
                       campaign_id: str | None = None) -> str | None:
        return None

    def log_campaign_progress(self, history: list[dict], plot_path: str | Path | None = None) -> None:
        return None

    def end_campaign(self, status: str = "FINISHED") -> None:
        return None

    def log_heldout(self, round_no: int, heldout: dict, candidate: int | None = None) -> str | None:
        return None

    def log_round(self, round_no: int, *, proposal: dict, result: dict | None, verdict: dict | None,
                  critique: str, diff: str, commits: dict, memory_snapshot: str,
                  approval: dict | None = None, heldout: dict | None = None,
                  extra_metrics: dict | None = None, candidate: int | None = None) -> str | None:
        return None
