"""The model side of `researcher serve`: a loaded checkpoint, a batcher thread and the chat template.

    engine = Engine("runs/models/base", batch_window_ms=5)
    future = engine.submit([render_chat([("user", "Q: 1 + 2 = ?")])], SamplingParams(max_new_tokens=8))
    completions = future.result()          # completions[i][j]: completion j of prompt i
    engine.close()

Requests from every HTTP handler land in one queue. A single worker thread takes the first,
waits `batch_window_ms` for more, then runs the compatible ones together in one
`model.generate.generate` call: on two CPU cores a second concurrent generate would only steal
cycles from the first, and one call over many rows costs far less than one call per row.
Compatible means equal `SamplingParams` (prompts aside), with two refinements:

- greedy requests ignore their seed, so they batch whatever seed they carry;
- a sampled request with a seed runs alone: the batch's rows share one generator, so the random
  numbers a row draws depend on which rows are beside it, and the seed's promise (same request,
  same completions) would otherwise not hold.

Greedy requests batched together agree with the same requests run alone except at near-ties: a
CPU matmul's rounding depends on the number of rows (see `model/generate.py`).

The chat template: our tokenizer is a byte-level BPE trained without one, so a conversation is
rendered as one line per message, `"{role}: {content}\\n"`, followed by `"assistant: "`, after
which the model writes the reply.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path

from model.generate import Completion, SamplingParams, generate
from model.presets import load_policy, load_tokenizer


def render_chat(messages: Sequence[tuple[str, str]]) -> str:
    """The prompt of a conversation of (role, content) messages, ready for the reply."""
    return "".join(f"{role}: {content}\n" for role, content in messages) + "assistant: "


def text_pieces(tokenizer, completion: Completion) -> list[str]:
    """The completion's text cut where each of its tokens ends, for streaming: the pieces join to
    exactly `completion.text`. A token that ends inside a multi-byte character decodes to a
    replacement character, so its bytes go out with the piece of the token that completes it."""
    text = completion.text
    ids = completion.token_ids
    prefixes = tokenizer.batch_decode([ids[: i + 1] for i in range(len(ids))], skip_special_tokens=True)
    pieces, done = [], 0
    for prefix in prefixes:
        if prefix.endswith("\ufffd"):
            continue
        end = min(len(prefix), len(text))
        if end > done:
            pieces.append(text[done:end])
            done = end
    if done < len(text):
        pieces.append(text[done:])
    return pieces


@dataclass(eq=False)  # hashed by identity: a seeded sampled job is a batch key of its own
class _Job:
    prompts: list[str]
    params: SamplingParams
    future: Future = field(default_factory=Future)

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.params.n

    def batch_key(self):
        if self.params.greedy:
            return replace(self.params, seed=None)
        if self.params.seed is not None:
            return self
        return self.params


@dataclass
class Stats:
    """What the batcher has done since the server started."""

    requests: int = 0
    generate_calls: int = 0
    rows: int = 0  # prompts x n, over every call
    completion_tokens: int = 0
    max_batch_requests: int = 0  # the most requests one generate call served
    batched_requests: int = 0  # requests that shared their generate call with another
    busy_seconds: float = 0.0  # time spent inside generate

    def as_dict(self) -> dict:
        out = dict(vars(self))
        out["busy_seconds"] = round(self.busy_seconds, 3)
        return out


class Engine:
    """A checkpoint behind a queue: `submit` from any thread, one worker thread generates."""

    def __init__(self, model_dir: str | Path, *, batch_window_ms: float = 5.0, max_batch_rows: int = 128):
        if batch_window_ms < 0:
            raise ValueError(f"batch_window_ms must be >= 0, got {batch_window_ms}")
        if max_batch_rows < 1:
            raise ValueError(f"max_batch_rows must be >= 1, got {max_batch_rows}")
        self.policy = load_policy(model_dir)
        self.tokenizer = load_tokenizer(model_dir)
        self.context_length = int(self.policy.config.max_position_embeddings)
        self.batch_window = batch_window_ms / 1000
        self.max_batch_rows = max_batch_rows
        self.stats = Stats()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._stats_lock = threading.Lock()
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="serve-batcher", daemon=True)
        self._worker.start()

    # -- the handlers' side ------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        """Tokens `generate` feeds the model for this prompt, <bos> included."""
        return len(self.tokenizer(text)["input_ids"])

    def submit(self, prompts: Sequence[str], params: SamplingParams) -> Future:
        """Queue a generation; the future's result is `generate`'s: result[i][j] for prompt i."""
        if self._closed:
            raise RuntimeError("the engine is closed")
        job = _Job(list(prompts), params)
        self._queue.put(job)
        return job.future

    def snapshot(self) -> dict:
        with self._stats_lock:
            return self.stats.as_dict()

    def close(self) -> None:
        """Stop the worker once the jobs already queued are done."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._worker.join()

    # -- the worker's side -------------------------------------------------------------------

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        """The first job plus every job that arrives within the batch window; and whether the
        queue said to stop. Jobs that queued up during the previous generate come at once."""
        jobs = [first]
        deadline = time.monotonic() + self.batch_window
        while True:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return jobs, False
            if job is None:
                return jobs, True
            jobs.append(job)

    def _work(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                return
            jobs, stop = self._collect(first)
            # a handler whose client went away cancels its future; its job is dropped here
            jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
            groups: dict[object, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(job.batch_key(), []).append(job)
            for group in groups.values():
                for batch in self._split(group):
                    self._run(batch)

    def _split(self, group: list[_Job]) -> list[list[_Job]]:
        """Consecutive batches of at most `max_batch_rows` rows (a bigger job runs alone)."""
        batches, rows = [[]], 0
        for job in group:
            if batches[-1] and rows + job.rows > self.max_batch_rows:
                batches.append([])
                rows = 0
            batches[-1].append(job)
            rows += job.rows
        return batches

    def _run(self, batch: list[_Job]) -> None:
        params = batch[0].params
        if params.greedy:
            params = replace(params, seed=None)
        prompts = [p for job in batch for p in job.prompts]
        start = time.perf_counter()
        try:
            completions = generate(self.policy, self.tokenizer, prompts, params)
        except Exception as err:  # the requests fail, the server stays up
            for job in batch:
                job.future.set_exception(err)
            return
        seconds = time.perf_counter() - start
        with self._stats_lock:
            s = self.stats
            s.requests += len(batch)
            s.generate_calls += 1
            s.rows += len(prompts) * params.n
            s.completion_tokens += sum(len(c.token_ids) for group in completions for c in group)
            s.max_batch_requests = max(s.max_batch_requests, len(batch))
            s.batched_requests += len(batch) if len(batch) > 1 else 0
            s.busy_seconds += seconds
        offset = 0
        for job in batch:
            job.future.set_result(completions[offset: offset + len(job.prompts)])
            offset += len(job.prompts)
