"""The model side of `researcher serve`: a checkpoint, a batcher thread, the chat template, streamed text.

    engine = Engine("runs/models/base", batch_window_ms=5)
    future = engine.submit([render_chat([("user", "Q: 1 + 2 = ?")])], SamplingParams(max_new_tokens=8))
    completions = future.result()          # completions[i][j]: completion j of prompt i
    engine.submit(prompts, params, on_token=lambda i, j, token: ...)   # each token as it is sampled
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

A job's `on_token` sink hears its tokens from the worker thread while the batch generates (what
streaming responses are made of), before its future gets the whole completions. A sink that
raises (its reader went away) is dropped; the batch goes on.

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
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path

from model.generate import Completion, SamplingParams, generate
from model.presets import load_policy, load_tokenizer


def render_chat(messages: Sequence[tuple[str, str]]) -> str:
    """The prompt of a conversation of (role, content) messages, ready for the reply."""
    return "".join(f"{role}: {content}\n" for role, content in messages) + "assistant: "


class TextDeltas:
    """One completion's text, cut into pieces as its tokens arrive, for streaming.

    `push(token)` returns the text that may go out now, `rest(completion)` what remains once the
    completion is whole; together they join to exactly `completion.text`. A piece never ends
    inside a multi-byte character (a token that does decodes to a replacement character, so its
    bytes wait for the token completing them), and never shows a stop string or any start of one:
    the tail that could still grow into a stop string waits for the next token. Decoding looks at
    the newest tokens only (the window trick of vLLM's detokenizer), so a token costs the same at
    any length.
    """

    def __init__(self, tokenizer, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.ids: list[int] = []
        self.text = ""  # the decoded text of ids[:read], whole characters only
        self.read = 0  # ids decoded into self.text
        self.window = 0  # where decoding starts: the tokens before `read` give the new ones context
        self.sent = 0  # characters of self.text already returned
        self.stopped = False  # a stop string showed up: nothing from it on ever goes out

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self._decode(self.ids[self.window: self.read])
        after = self._decode(self.ids[self.window:])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self.text += after[len(before):]
        self.window, self.read = self.read, len(self.ids)
        if self.stopped:
            return ""
        hits = [i for i in (self.text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stopped = True
            end = min(hits)
        else:
            end = len(self.text) - self._stop_start(self.text)
        piece = self.text[self.sent: end]
        self.sent = max(self.sent, end)
        return piece

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _stop_start(self, text: str) -> int:
        """The length of the longest tail of `text` that begins a stop string."""
        return max((k for s in self.stop for k in range(min(len(s) - 1, len(text)), 0, -1)
                    if text.endswith(s[:k])), default=0)

    def rest(self, completion: Completion) -> str:
        return completion.text[self.sent:]


@dataclass(eq=False)  # hashed by identity: a seeded sampled job is a batch key of its own
class _Job:
    prompts: list[str]
    params: SamplingParams
    on_token: Callable[[int, int, int], None] | None = None  # called from the worker thread
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

    def submit(self, prompts: Sequence[str], params: SamplingParams, *,
               on_token: Callable[[int, int, int], None] | None = None) -> Future:
        """Queue a generation; the future's result is `generate`'s: result[i][j] for prompt i.
        `on_token(i, j, token_id)` is called from the worker thread for each token of
        completion j of prompt i as it is sampled, all of them before the future is done."""
        if self._closed:
            raise RuntimeError("the engine is closed")
        job = _Job(list(prompts), params, on_token)
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
        route = None
        if any(job.on_token is not None for job in batch):
            owners = [(job, i) for job in batch for i in range(len(job.prompts))]  # of each prompt of the call

            def route(prompt: int, choice: int, token: int) -> None:
                job, i = owners[prompt]
                if job.on_token is None:
                    return
                try:
                    job.on_token(i, choice, token)
                except Exception:  # its reader is gone (a closed event loop): the other jobs go on
                    job.on_token = None

        start = time.perf_counter()
        try:
            completions = generate(self.policy, self.tokenizer, prompts, params, on_token=route)
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
