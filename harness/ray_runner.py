"""`runner=ray`: evaluate a round's candidates at once, as Ray actors with resource requests.

Each actor (`Evaluator`) asks Ray for `cpus` CPUs and `gpus` GPUs and runs the very runner the
local one is (`rl_pipeline.run.run_scaffold`: the warm trusted worker, the bubblewrap sandbox under
it, the time limits, a `failed` result for any crash inside), started with the pool and kept warm
across rounds. What can go
wrong on the Ray side becomes a failed result too: an actor that dies (killed, out of memory, its
node lost) fails the candidate it held, and is replaced for the next one; an actor that outlives the
runner's own limits is killed. A job whose actor had died before the job began (while it was idle)
is given once to a new one. Only a sandbox that cannot be built stops the campaign, as it does with
the local runner. A run that would keep one worker busy while the others idle (a lone GRPO
candidate, a re-test, the baseline) has its seeds scored in parts on several workers and merged
into the result the whole run gives (`harness.seed_split`).

Without an address the pool starts its own Ray on this machine, bound to 127.0.0.1 and sized by
Ray's detection of its CPUs and GPUs. `ray start` runs under `harness.process_tree`'s guard, a
subreaper tied to this process: when the pool closes, or this process dies even by kill -9, every
process of that Ray (GCS, raylet, agents, actors, and the runners' workers and sandboxes under them)
is stopped. `address="auto"` or `"ray://HOST:PORT"` joins an existing cluster instead, which must
see the project and the runs folder at the same paths (jobs name absolute paths).

Ray is imported only here, and this module only when `runner=ray` is chosen.

    pool = RayPool({"timeout_s": 900, "memory_gb": 16, "base": ...}, address=None, cpus=1, gpus=0, workers=None)
    results = pool.run([{"scaffold": dir, "out": out, "seeds": [0, 1], "heldout": False}, ...])  # in order
    pool.close()
"""

from __future__ import annotations

import errno
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.seed_split import merge_parts, part_job, splits
from rl_pipeline.env import scrubbed_env
from rl_pipeline.result import failed_result, scaffold_commit, write_result
from rl_pipeline.run import DEFAULTS, WORKER_GRACE_S, WORKER_START_S, RunPlan, job_options, run_plan
from rl_pipeline.sandbox import SandboxUnavailable

PROJECT = Path(__file__).resolve().parents[1]
RAY_START_S = 180.0  # `ray start` on a loaded machine
STOP_GRACE_S = 10.0
WAIT_POLL_S = 0.25  # how often a run waiting for a policy in training looks for it in the cache
# Ray picks the node's address from its route to the outside unless it is told that this is a
# single-machine cluster; then every Ray server listens on 127.0.0.1 only.
LOCAL_ONLY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


class Evaluator:
    """The actor: one warm runner (rl_pipeline.run) evaluating one job at a time."""

    def __init__(self, options: dict):
        self.options = options

    def pid(self) -> int:
        return os.getpid()

    def evaluate(self, job: dict) -> dict:
        from rl_pipeline.run import job_options, run_scaffold

        return run_scaffold(job["scaffold"], job["out"], **job_options(job), **self.options)

    def warm(self) -> None:
        from rl_pipeline.run import start_warm

        start_warm(**{key: self.options[key] for key in ("sandbox", "memory_gb") if key in self.options})

    def close(self) -> None:
        from rl_pipeline.run import shutdown

        shutdown()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def failed(job: dict, reason: str) -> dict:
    """The failed result of a job the runner could not finish, written where the job's would be."""
    result = failed_result({"scaffold": str(Path(job["scaffold"]).resolve()), "commit": scaffold_commit(job["scaffold"]),
                            "seeds": list(job["seeds"])}, reason)
    write_result(job["out"], result)
    return result


class RayPool:
    """Actors on a Ray cluster (a local one started here, or one joined by address) that evaluate jobs."""

    def __init__(self, options: dict, *, address: str | None, cpus: int, gpus: float, workers: int | None):
        self.head: subprocess.Popen | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="ray-head-", suffix=".log", delete=False)
        if address is None:
            # Ray reads these when it is imported (below), so this process is a local-only driver too.
            # The token is this process's own (the runners' children never see it: scrubbed_env()).
            if "ray" in sys.modules and os.environ.get("RAY_AUTH_MODE") != "token":
                raise RuntimeError("ray was imported before the local Ray was started: it would not bind to "
                                   "127.0.0.1 nor hold its token; start the pool before anything imports ray")
            os.environ.update(LOCAL_ONLY_ENV | {"RAY_AUTH_MODE": "token"})
            os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
            address = self._start_head()
        import ray

        try:
            ray.init(address=address, log_to_driver=False, logging_level="WARNING",
                     runtime_env={"env_vars": {"PYTHONPATH": str(PROJECT)}})
        except BaseException:
            self.close()
            raise
        self.ray = ray
        self.deadline_s = WORKER_START_S + options["timeout_s"] + WORKER_GRACE_S  # the runner's limits, then a margin
        self.actor_class = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=0, max_task_retries=0)(Evaluator)
        self.actor_options = options | {"threads": cpus}
        self.cache_dir = Path((DEFAULTS | options)["cache_dir"]).resolve()
        resources = ray.cluster_resources()
        fits = int(resources.get("CPU", 0) // cpus)
        if gpus:
            fits = min(fits, int(resources.get("GPU", 0) // gpus))
        if fits < 1:
            self.close()
            raise RuntimeError(f"the Ray cluster has {resources.get('CPU', 0)} CPUs and {resources.get('GPU', 0)} "
                               f"GPUs: not enough for one candidate ({cpus} CPUs, {gpus} GPUs)")
        self.workers = min(workers or fits, fits)
        # Every actor starts its runner now, side by side, rather than in the first round that needs it;
        # a start that fails is tried again, and reported, by the actor's first job.
        self.idle = [self.actor_class.remote(self.actor_options) for _ in range(self.workers)]
        for actor in self.idle:
            actor.warm.remote()

    # ------------------------------------------------------------------ the local cluster

    def _start_head(self) -> str:
        """`ray start --head` under the process-tree guard; its address once it is up."""
        port = _free_port()
        env = scrubbed_env() | LOCAL_ONLY_ENV | {
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.environ["RAY_AUTH_TOKEN"],
            "PYTHONPATH": os.pathsep.join([str(PROJECT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        self.head = subprocess.Popen(
            [sys.executable, "-m", "harness.process_tree", "--parent", str(os.getpid()), "--grace-s", str(STOP_GRACE_S),
             "--", sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={port}",
             "--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats",
             f"--dashboard-agent-listen-port={_free_port()}"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=PROJECT,
            start_new_session=True)
        deadline = time.monotonic() + RAY_START_S
        while "Ray runtime started" not in Path(self.log.name).read_text(errors="replace"):
            if self.head.poll() is not None or time.monotonic() > deadline:
                tail = Path(self.log.name).read_text(errors="replace")[-3000:]
                self.close()
                raise RuntimeError(f"the local Ray did not start:\n{tail}")
            time.sleep(0.2)
        return f"127.0.0.1:{port}"

    # ------------------------------------------------------------------ jobs

    def _actor(self):
        return self.idle.pop() if self.idle else self.actor_class.remote(self.actor_options)

    def run(self, jobs: list[dict]) -> list[dict]:
        """Every job's result ({scaffold, out, seeds, heldout}: what `run_scaffold` is called with, less
        the pool's options), in job order; at most `workers` run at once, the longest first (a run
        that trains before one whose training is cached), so that the short ones fill the gaps. A
        job longer than the batch's share per worker has its seeds scored in parts on several
        workers and merged (`harness.seed_split`). A job that would train the policy a running job
        is training (a decoder companion beside its proposal, a part of a split run) waits for that
        policy and reads it from the cache as soon as it is there (see `_next`)."""
        plans = [self._plan(job) for job in jobs]
        chunks = splits(jobs, [plan.seconds for plan in plans], self.workers)
        parts = {i: [part_job(jobs[i], seeds) for seeds in chunks[i]] for i in chunks}
        for i in parts:
            Path(jobs[i]["out"], "result.json").unlink(missing_ok=True)  # the merged one replaces it
        flat, flat_plans = [], []  # the jobs as run, each split one by its parts (planned anew)
        for i, (job, plan) in enumerate(zip(jobs, plans)):
            flat += parts.get(i, [job])
            flat_plans += [self._plan(part) for part in parts[i]] if i in parts else [plan]
        results = iter(self._run_all(flat, flat_plans))
        return [merge_parts(job, parts[i], [next(results) for _ in parts[i]]) if i in parts else next(results)
                for i, job in enumerate(jobs)]

    def _run_all(self, jobs: list[dict], plans: list[RunPlan]) -> list[dict]:
        ray = self.ray
        results: list[dict | None] = [None] * len(jobs)
        queue = sorted(range(len(jobs)), key=lambda index: -plans[index].seconds)
        running: dict = {}  # object ref -> (index, actor, started)
        retried: set[int] = set()
        while queue or running:
            while queue and len(running) < self.workers:
                index = self._next(queue, plans, {plans[i].training_key for i, _, _ in running.values()})
                if index is None:
                    break
                queue.remove(index)
                job, actor = jobs[index], self._actor()
                Path(job["out"], "job.json").unlink(missing_ok=True)  # run_scaffold writes it as the job begins
                running[actor.evaluate.remote(job)] = (index, actor, time.monotonic())
            training = {plans[i].training_key for i, _, _ in running.values()} - {None}
            waiting = {plans[i].training_key for i in queue} & training
            done, _ = ray.wait(list(running), num_returns=1, timeout=WAIT_POLL_S if waiting else 1.0)
            for ref in done:
                index, actor, _ = running.pop(ref)
                results[index] = self._collect(ref, jobs[index], actor, retry=index not in retried)
                if results[index] is None:  # its actor had died before the job began (while idle): a new one
                    retried.add(index)
                    queue.insert(0, index)
            # The runs that waited for a policy: it is cached now (they are short, and longer runs go
            # first), or its run ended without it (one of them trains it).
            still = {plans[i].training_key for i, _, _ in running.values()}
            ready = {key for key in waiting if key not in still or (self.cache_dir / key).is_dir()}
            if ready:
                for index in queue:
                    if plans[index].training_key in ready:
                        plans[index] = self._plan(jobs[index])
                queue.sort(key=lambda index: -plans[index].seconds)
            for ref, (index, actor, started) in list(running.items()):
                if time.monotonic() - started > self.deadline_s:
                    running.pop(ref)
                    ray.kill(actor)
                    results[index] = failed(jobs[index], f"the Ray actor ran past {self.deadline_s:.0f}s; it was killed")
        return results

    @staticmethod
    def _next(queue: list[int], plans: list[RunPlan], training: set) -> int | None:
        """The first queued job that would not train a policy a running job is training (`training`:
        the running jobs' training keys), or None: the worker waits, and the job reads the policy
        from the cache once it is trained (as soon as that, not when the job training it ends)."""
        return next((index for index in queue
                     if plans[index].training_key is None or plans[index].training_key not in training), None)

    def _plan(self, job: dict) -> RunPlan:
        return run_plan(job["scaffold"], **job_options(job), **self.actor_options)

    def _collect(self, ref, job: dict, actor, *, retry: bool) -> dict | None:
        """The job's result; a failed one when its actor died or raised (the actor is then dropped),
        or None to `retry` a job whose actor was dead before it began."""
        ray = self.ray
        try:
            result = ray.get(ref)
        except ray.exceptions.RayTaskError as err:
            if isinstance(err.cause, SandboxUnavailable) or (
                    isinstance(err.cause, OSError) and err.cause.errno == errno.ENOSPC):  # no verdict on the job
                raise err.cause from None
            ray.kill(actor)
            return failed(job, f"the Ray actor raised {type(err.cause).__name__}: {err.cause}")
        except ray.exceptions.RayError as err:  # the actor's process or node died
            ray.kill(actor)
            if retry and not Path(job["out"], "job.json").exists():
                return None
            return failed(job, f"the Ray worker died ({type(err).__name__}: {str(err).splitlines()[0][:300]})")
        self.idle.append(actor)
        return result

    # ------------------------------------------------------------------ stop

    def close(self) -> None:
        """Stop the actors (their runners first, gracefully), leave Ray, and stop a Ray started here."""
        ray = getattr(self, "ray", None)
        if ray is not None and ray.is_initialized():
            try:
                ray.get([actor.close.remote() for actor in self.idle], timeout=STOP_GRACE_S)
            except ray.exceptions.RayError:
                pass  # an actor that cannot close is killed with the cluster, or below
            for actor in self.idle:
                ray.kill(actor)
            self.idle = []
            ray.shutdown()
        if self.head is not None and self.head.poll() is None:
            self.head.send_signal(signal.SIGTERM)  # the guard stops the whole tree, then exits
            try:
                self.head.wait(timeout=3 * STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.head.pid, signal.SIGKILL)
                self.head.wait()
        self.head = None
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)
