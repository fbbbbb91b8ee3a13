"""The HTTP side of `researcher serve`: an OpenAI-compatible FastAPI app over one checkpoint.

    app = create_app("runs/models/base")          # then: uvicorn.run(app, host="127.0.0.1", port=8000)

Endpoints (all under /v1, bodies and errors shaped as OpenAI's):

    GET  /v1/models                the one served model (named after its folder, or served_name)
    GET  /v1/models/{model}
    POST /v1/chat/completions      messages rendered by `engine.render_chat`
    POST /v1/completions           a prompt or a list of prompts
    GET  /v1/stats                 the batcher's counters (not OpenAI's): calls, batch sizes, tokens

When the environment variable `api_key_env` is set (read once, when the app is made), every
endpoint wants `Authorization: Bearer <key>`, and answers 401 otherwise.

Streaming: server-sent events (`data: {...}`) go out while the batch generates, each choice's
text as its tokens are sampled (`engine.TextDeltas` keeps multi-byte characters whole and holds
back what could still become a stop string), then, once the completions are whole, what remains
of each choice's text and a chunk with its finish_reason, a usage chunk when
`stream_options.include_usage`, then `data: [DONE]`. A streamed request batches with the others
as before. It is checked before it is queued, and its response starts once its first token is
out, so a request refused or failing before then gets a proper error body; one that fails later
ends its stream with an error event. A client that goes away mid-stream leaves its rows to finish
with the batch.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import Future
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.engine import Engine, TextDeltas, render_chat
from serving.schemas import APIError, ChatRequest, CompletionRequest, parse_request
from model.generate import Completion, SamplingParams

OWNER = "researcher"


def create_app(model_dir: str | Path, *, api_key_env: str = "RESEARCHER_API_KEY", served_name: str | None = None,
               batch_window_ms: float = 5.0, max_n: int = 16, max_tokens_limit: int = 512,
               max_rows: int = 128, max_body_bytes: int = 1 << 20) -> FastAPI:
    """An app serving the checkpoint in `model_dir` (loaded now, before the app is returned).

    `max_n` caps n; `max_tokens_limit` caps max_tokens and is the default of a chat request that
    gives none (within the context); `max_rows` caps prompts x n in one request and in one
    generate call; a body over `max_body_bytes` gets 413.
    """
    engine = Engine(model_dir, batch_window_ms=batch_window_ms, max_batch_rows=max_rows)
    name = served_name or Path(model_dir).resolve().name
    created = int((Path(model_dir) / "config.json").stat().st_mtime)
    api_key = os.environ.get(api_key_env) or None

    @asynccontextmanager
    async def lifespan(_app):
        yield
        engine.close()

    app = FastAPI(title="researcher serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine = engine

    # -- errors ------------------------------------------------------------------------------

    @app.exception_handler(APIError)
    async def api_error(_request, err: APIError):
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        if err.status_code == 404:
            message = f"Unknown request URL: {request.method} {request.url.path}."
            return JSONResponse(APIError(404, message, code="unknown_url").body(), status_code=404)
        return JSONResponse(APIError(err.status_code, str(err.detail)).body(), status_code=err.status_code)

    def failure(err: Exception) -> APIError:
        return APIError(500, f"The server failed to answer: {type(err).__name__}: {err}", type="server_error")

    @app.exception_handler(Exception)
    async def server_error(_request, err: Exception):
        return JSONResponse(failure(err).body(), status_code=500)

    # -- checks shared by the endpoints -------------------------------------------------------

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError(401, "You didn't provide an API key. Send it in an Authorization header "
                           "(Authorization: Bearer YOUR_KEY).", code="invalid_api_key")
        if not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")

    async def read_body(request: Request) -> bytes:
        too_large = APIError(413, f"The request body is larger than {max_body_bytes} bytes.",
                             code="request_too_large")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body_bytes:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    def check_model(model: str) -> None:
        if model != name:
            raise APIError(404, f"The model '{model}' does not exist; this server serves '{name}'.",
                           param="model", code="model_not_found")

    def sampling(body, prompts: list[str], max_tokens: int | None, prompt_param: str) -> SamplingParams:
        """The request's SamplingParams, once its limits are checked against this model."""
        n = body.n or 1
        if n > max_n:
            raise APIError(400, f"Invalid value for 'n': at most {max_n} completions per prompt.", param="n",
                           code="invalid_value")
        if len(prompts) * n > max_rows:
            raise APIError(400, f"This request asks for {len(prompts) * n} completions (prompts x n); "
                           f"the limit is {max_rows}.", param="n", code="invalid_value")
        if max_tokens is not None and max_tokens > max_tokens_limit:
            raise APIError(400, f"Invalid value for 'max_tokens': at most {max_tokens_limit}.",
                           param="max_tokens", code="invalid_value")
        if body.stream_options is not None and not body.stream:
            raise APIError(400, "stream_options is only allowed when stream is true.", param="stream_options",
                           code="invalid_value")
        longest = max(engine.count_tokens(p) for p in prompts)
        room = engine.context_length - longest
        wanted = max_tokens if max_tokens is not None else min(max_tokens_limit, room)
        if wanted < 1 or longest + wanted > engine.context_length:
            raise APIError(400, f"This model's maximum context length is {engine.context_length} tokens. "
                           f"However, you requested {longest + max(wanted, 1)} tokens ({longest} in the "
                           f"{prompt_param}, {max(wanted, 1)} in the completion). Please reduce the length "
                           f"of the {prompt_param} or completion.", param=prompt_param,
                           code="context_length_exceeded")
        try:
            return SamplingParams(
                max_new_tokens=wanted,
                temperature=1.0 if body.temperature is None else body.temperature,
                top_p=1.0 if body.top_p is None else body.top_p,
                frequency_penalty=body.frequency_penalty or 0.0,
                presence_penalty=body.presence_penalty or 0.0,
                stop=tuple(body.stop or ()),
                n=n,
                seed=None if body.seed is None else body.seed % 2**64,  # torch seeds are unsigned
            )
        except ValueError as err:
            raise APIError(400, str(err), code="invalid_value") from None

    async def run(prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        return await asyncio.wrap_future(engine.submit(prompts, params))

    def usage(groups: list[list[Completion]]) -> dict:
        prompt_tokens = sum(group[0].prompt_tokens for group in groups)
        completion_tokens = sum(len(c.token_ids) for group in groups for c in group)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    async def run_streamed(prompts: list[str], params: SamplingParams) -> tuple[Future, tuple, asyncio.Queue]:
        """Queue a generation whose tokens come onto this event loop as they are sampled: a queue
        of (prompt, choice, token) tuples, then the engine's future once it is done. Returns the
        future, the first token and the queue once that token is out, so that a generation that
        fails at once is answered with an error body rather than a stream cut short."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        future = engine.submit(prompts, params,
                               on_token=lambda *token: loop.call_soon_threadsafe(events.put_nowait, token))
        future.add_done_callback(lambda done: loop.call_soon_threadsafe(events.put_nowait, done))
        try:
            first = await events.get()
        except asyncio.CancelledError:
            future.cancel()  # the client went away: the batcher drops the job if it has not started
            raise
        if first is future:
            future.result()  # every row samples a token first, so this is generate's error
        return future, first, events

    async def deltas(future: Future, first: tuple, events: asyncio.Queue,
                     params: SamplingParams) -> AsyncIterator[tuple[int, str, str | None]]:
        """(choice, text, finish_reason): pieces of text as the tokens arrive, then choice by choice
        what remains of its text and its finish_reason. Choice k is completion k % n of prompt
        k // n, OpenAI's numbering."""
        texts: dict[int, TextDeltas] = {}
        event = first
        while event is not future:
            i, j, token = event
            k = i * params.n + j
            piece = texts.setdefault(k, TextDeltas(engine.tokenizer, params.stop)).push(token)
            if piece:
                yield k, piece, None
            event = await events.get()
        for k, c in enumerate(c for group in future.result() for c in group):
            rest = texts[k].rest(c)
            if rest:
                yield k, rest, None
            yield k, "", c.finish_reason

    def event_stream(chunks: AsyncIterator[dict]) -> StreamingResponse:
        async def events():
            try:
                async for chunk in chunks:
                    yield f"data: {json.dumps(chunk)}\n\n"
            except Exception as err:  # the 200 went out with the first chunk: say it in the stream
                yield f"data: {json.dumps(failure(err).body())}\n\n"
                return
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    # -- endpoints ---------------------------------------------------------------------------

    def model_card() -> dict:
        return {"id": name, "object": "model", "created": created, "owned_by": OWNER}

    @app.get("/v1/models")
    async def list_models(request: Request):
        authorize(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model:path}")
    async def retrieve_model(model: str, request: Request):
        authorize(request)
        check_model(model)
        return model_card()

    @app.get("/v1/stats")
    async def stats(request: Request):
        authorize(request)
        return engine.snapshot()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        body = parse_request(await read_body(request), ChatRequest)
        check_model(body.model)
        if body.max_tokens is not None and body.max_completion_tokens is not None:
            raise APIError(400, "Give max_tokens or max_completion_tokens, not both.", param="max_tokens",
                           code="invalid_value")
        prompt = render_chat([(m.role, m.text) for m in body.messages])
        params = sampling(body, [prompt], body.max_completion_tokens or body.max_tokens, "messages")
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": name}
        if not body.stream:
            [group] = await run([prompt], params)
            choices = [{"index": j, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
                        "finish_reason": c.finish_reason} for j, c in enumerate(group)]
            return {**head, "object": "chat.completion", "choices": choices, "usage": usage([group]),
                    "system_fingerprint": None}
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        future, first, events = await run_streamed([prompt], params)

        def chunk(index: int, delta: dict, finish_reason: str | None = None) -> dict:
            out = {**head, "object": "chat.completion.chunk", "system_fingerprint": None,
                   "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
            return out | {"usage": None} if include_usage else out

        async def chunks() -> AsyncIterator[dict]:
            for j in range(params.n):
                yield chunk(j, {"role": "assistant", "content": ""})
            async for j, text, finish_reason in deltas(future, first, events, params):
                yield chunk(j, {"content": text} if text else {}, finish_reason)
            if include_usage:
                yield {**head, "object": "chat.completion.chunk", "system_fingerprint": None, "choices": [],
                       "usage": usage(future.result())}

        return event_stream(chunks())

    @app.post("/v1/completions")
    async def completions(request: Request):
        authorize(request)
        body = parse_request(await read_body(request), CompletionRequest)
        check_model(body.model)
        max_tokens = 16 if body.max_tokens is None else body.max_tokens  # OpenAI's default here
        params = sampling(body, body.prompt, max_tokens, "prompt")
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": name}
        if not body.stream:
            groups = await run(body.prompt, params)
            # OpenAI numbers the choices prompt by prompt: prompt i's completion j is choice i * n + j
            flat = [c for group in groups for c in group]
            choices = [{"index": k, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
                       for k, c in enumerate(flat)]
            return {**head, "object": "text_completion", "choices": choices, "usage": usage(groups),
                    "system_fingerprint": None}
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        future, first, events = await run_streamed(body.prompt, params)

        def chunk(index: int, text: str, finish_reason: str | None = None) -> dict:
            out = {**head, "object": "text_completion", "system_fingerprint": None,
                   "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}]}
            return out | {"usage": None} if include_usage else out

        async def chunks() -> AsyncIterator[dict]:
            async for k, text, finish_reason in deltas(future, first, events, params):
                yield chunk(k, text, finish_reason)
            if include_usage:
                yield {**head, "object": "text_completion", "system_fingerprint": None, "choices": [],
                       "usage": usage(future.result())}

        return event_stream(chunks())

    return app
