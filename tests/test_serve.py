"""`researcher serve` over real HTTP, with the official `openai` client.

A tiny random policy is saved to a temporary folder and served by a child process on a free
port (`serving.launch.served`). Answers are checked against `model.generate.generate` run
here on the same checkpoint: greedy and seeded completions must match it exactly, and the usage
counts must be its token counts. Both sides use one torch thread, so their arithmetic is the same.
Only a generation that fails while streaming is staged in process, where generate can be replaced.
"""

import threading
import time

import httpx2
import openai
import pytest
import torch
from fastapi.testclient import TestClient

import serving.engine
from serving.app import create_app
from serving.engine import TextDeltas, render_chat
from serving.launch import ServerFailed, served
from model import build_policy, build_tokenizer, load_policy, load_tokenizer, save_policy
from model.generate import Completion, SamplingParams, generate

NAME = "tiny-chat"
KEY = "test-key-123"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tokenizer = build_tokenizer()
    return save_policy(build_policy("tiny", tokenizer, seed=0), tokenizer, tmp_path_factory.mktemp("serve") / NAME)


@pytest.fixture(scope="module")
def reference(checkpoint):
    """generate() here, on the served checkpoint: what the server must answer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    policy, tokenizer = load_policy(checkpoint), load_tokenizer(checkpoint)

    def run(prompts, **params):
        return generate(policy, tokenizer, prompts, SamplingParams(**params))

    run.tokenizer = tokenizer
    yield run
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base_url(checkpoint):
    # a long batch window, so requests sent together surely share a generate call
    with served(checkpoint, env={"RESEARCHER_API_KEY": KEY},
                args=["--threads", "1", "--batch-window-ms", "100", "--max-tokens", "256"]) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=60)


def post(base_url, path, content: bytes, key=KEY):
    return httpx2.post(f"{base_url}{path}", content=content, timeout=60,
                       headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})


def chat(text):
    return [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": text}]


def chat_prompt(text):
    return render_chat([("system", "Answer briefly."), ("user", text)])


# ---------------------------------------------------------------------------------------------
# answers
# ---------------------------------------------------------------------------------------------

def test_models(client):
    assert [m.id for m in client.models.list().data] == [NAME]
    assert client.models.retrieve(NAME).owned_by == "researcher"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_chat_equals_generate_with_real_usage(client, reference):
    answer = client.chat.completions.create(model=NAME, messages=chat("Q: 12 + 30 = ?"), max_tokens=8,
                                            temperature=0)
    [[expected]] = reference([chat_prompt("Q: 12 + 30 = ?")], max_new_tokens=8, temperature=0)
    [choice] = answer.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == expected.text
    assert choice.finish_reason == expected.finish_reason
    prompt_tokens = len(reference.tokenizer(chat_prompt("Q: 12 + 30 = ?"))["input_ids"])
    assert answer.usage.prompt_tokens == expected.prompt_tokens == prompt_tokens
    assert answer.usage.completion_tokens == len(expected.token_ids)
    assert answer.usage.total_tokens == prompt_tokens + len(expected.token_ids)


def test_completions_of_several_prompts(client, reference):
    prompts = ["1 2 3", "The researcher analyzes"]
    answer = client.completions.create(model=NAME, prompt=prompts, max_tokens=6, temperature=0)
    expected = reference(prompts, max_new_tokens=6, temperature=0)
    assert [c.index for c in answer.choices] == [0, 1]
    assert [c.text for c in answer.choices] == [group[0].text for group in expected]
    assert answer.usage.prompt_tokens == sum(len(reference.tokenizer(p)["input_ids"]) for p in prompts)
    assert answer.usage.completion_tokens == sum(len(group[0].token_ids) for group in expected)


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_stream_joins_to_the_whole_answer(client, endpoint):
    knobs = dict(model=NAME, max_tokens=12, temperature=0, n=2)
    if endpoint == "chat":
        create, knobs["messages"] = client.chat.completions.create, chat("hello there")
    else:
        create, knobs["prompt"] = client.completions.create, "hello there"
    whole = create(**knobs)
    chunks = list(create(**knobs, stream=True, stream_options={"include_usage": True}))
    *chunks, last = chunks
    assert last.choices == [] and last.usage == whole.usage
    for choice in whole.choices:
        mine = [c.choices[0] for c in chunks if c.choices[0].index == choice.index]
        if endpoint == "chat":
            assert mine[0].delta.role == "assistant"
            text = "".join(c.delta.content or "" for c in mine)
            assert text == choice.message.content
        else:
            assert "".join(c.text for c in mine) == choice.text
        assert len(mine) > 3  # token by token, not one lump
        assert [c.finish_reason for c in mine] == [None] * (len(mine) - 1) + [choice.finish_reason]


def test_stream_is_incremental(client, reference):
    """The first piece of text arrives while the rest is still being generated."""
    knobs = dict(model=NAME, prompt="Once", max_tokens=200, temperature=1.0, seed=5)
    [[expected]] = reference(["Once"], max_new_tokens=200, temperature=1.0, seed=5)
    assert expected.finish_reason == "length"  # no early EOS: 200 tokens to wait for
    start = time.perf_counter()
    arrivals, pieces = [], []
    for chunk in client.completions.create(**knobs, stream=True):
        if chunk.choices[0].text:
            arrivals.append(time.perf_counter() - start)
            pieces.append(chunk.choices[0].text)
    total = time.perf_counter() - start
    assert "".join(pieces) == expected.text == client.completions.create(**knobs).choices[0].text
    assert len(pieces) > 50
    assert arrivals[0] < 0.5 * total, f"first piece at {arrivals[0]:.3f} s of {total:.3f} s"
    assert arrivals[-1] - arrivals[0] > 0.5 * total  # spread over the generation, not one burst at the end


def test_stream_survives_a_client_that_leaves(client, base_url):
    with httpx2.stream("POST", f"{base_url}/completions", timeout=60, headers={"Authorization": f"Bearer {KEY}"},
                       json={"model": NAME, "prompt": "Once", "max_tokens": 200, "stream": True}) as response:
        first = next(response.iter_lines())
        assert response.status_code == 200 and first.startswith("data: {")
    answer = client.completions.create(model=NAME, prompt="1 2", max_tokens=4, temperature=0)
    assert answer.choices[0].finish_reason in ("stop", "length")


def test_stream_failures(checkpoint, monkeypatch):
    """In process, with generate failing: before the first token the request gets an error body,
    after it the stream ends with an error event."""
    def fails_at_once(*args, **kwargs):
        raise RuntimeError("broken at once")

    def fails_later(model, tokenizer, prompts, params, on_token):
        on_token(0, 0, 40)
        raise RuntimeError("broken later")

    body = {"model": NAME, "prompt": "x", "max_tokens": 4, "stream": True}
    with TestClient(create_app(checkpoint, api_key_env="NO_SUCH_KEY"), raise_server_exceptions=False) as http:
        monkeypatch.setattr(serving.engine, "generate", fails_at_once)
        response = http.post("/v1/completions", json=body)
        assert response.status_code == 500 and "broken at once" in response.json()["error"]["message"]
        monkeypatch.setattr(serving.engine, "generate", fails_later)
        response = http.post("/v1/completions", json=body)
        assert response.status_code == 200
        *_, last = [line for line in response.text.splitlines() if line]
        assert "broken later" in last and "[DONE]" not in response.text


def push_all(deltas, ids):
    return [piece for piece in map(deltas.push, ids) if piece]


def test_text_deltas_keep_multibyte_characters_whole(reference):
    text = "héllo ✓ 日本 ok"
    ids = reference.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text)  # characters split across tokens, the case this is about
    deltas = TextDeltas(reference.tokenizer)
    pieces = push_all(deltas, ids)
    assert "".join(pieces) == text and len(pieces) > 3
    assert not any("\ufffd" in piece for piece in pieces)
    assert deltas.rest(Completion(text, ids, "length", 1)) == ""


def test_text_deltas_never_show_a_stop_string(reference):
    text = "héllo ✓ 日本 ok"
    ids = reference.tokenizer(text, add_special_tokens=False)["input_ids"]
    for stop in ("本 ", "llo", "ok"):  # multi-byte, early, the last characters
        deltas, cut, sent = TextDeltas(reference.tokenizer, [stop]), text[: text.find(stop)], ""
        for token in ids:
            sent += deltas.push(token)
            assert cut.startswith(sent), stop
        assert sent + deltas.rest(Completion(cut, ids, "stop", 1)) == cut
    # a stop string the text only begins: its start waits, and goes out with the rest
    deltas = TextDeltas(reference.tokenizer, ["ok!"])
    assert "".join(push_all(deltas, ids)) == text[:-2]
    assert deltas.rest(Completion(text, ids, "length", 1)) == "ok"


def test_n_and_seed(client, reference):
    knobs = dict(model=NAME, prompt="Q: 7 * 8", max_tokens=8, temperature=1.0, top_p=0.9, n=3)
    first = client.completions.create(**knobs, seed=7)
    again = client.completions.create(**knobs, seed=7)
    other = client.completions.create(**knobs, seed=8)
    [expected] = reference(["Q: 7 * 8"], max_new_tokens=8, temperature=1.0, top_p=0.9, n=3, seed=7)
    texts = [c.text for c in first.choices]
    assert texts == [c.text for c in again.choices] == [c.text for c in expected]
    assert texts != [c.text for c in other.choices]
    assert len(set(texts)) > 1  # three draws, not one answer thrice
    assert first.usage.completion_tokens == sum(len(c.token_ids) for c in expected)


def test_negative_seed_is_reproducible(client):
    knobs = dict(model=NAME, messages=chat("hi"), max_tokens=6, seed=-5)
    assert (client.chat.completions.create(**knobs).choices[0].message.content
            == client.chat.completions.create(**knobs).choices[0].message.content)


def test_stop_strings(client, reference):
    [[free]] = reference(["0 1 2"], max_new_tokens=16, temperature=0)
    stop = free.text[5:7]
    assert len(stop) == 2, f"the random policy's text is too short to pick a stop string from: {free.text!r}"
    answer = client.completions.create(model=NAME, prompt="0 1 2", max_tokens=16, temperature=0, stop=[stop])
    [[expected]] = reference(["0 1 2"], max_new_tokens=16, temperature=0, stop=(stop,))
    assert answer.choices[0].text == expected.text == free.text[: free.text.find(stop)]
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.completion_tokens == len(expected.token_ids) < 16


def test_penalties(client, reference):
    knobs = dict(max_new_tokens=12, temperature=0, frequency_penalty=1.5, presence_penalty=-0.5)
    answer = client.completions.create(model=NAME, prompt="1 1 1", max_tokens=12, temperature=0,
                                       frequency_penalty=1.5, presence_penalty=-0.5)
    [[expected]] = reference(["1 1 1"], **knobs)
    [[plain]] = reference(["1 1 1"], max_new_tokens=12, temperature=0)
    assert answer.choices[0].text == expected.text != plain.text


def stats(base_url):
    return httpx2.get(f"{base_url}/stats", headers={"Authorization": f"Bearer {KEY}"}).json()


def ask_together(client, prompts, **knobs) -> dict:
    """Each prompt from its own thread, all sent at once; the answers by prompt."""
    answers, start = {}, threading.Barrier(len(prompts))

    def ask(prompt):
        start.wait()
        answers[prompt] = client.completions.create(model=NAME, prompt=prompt, **knobs)

    threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def test_concurrent_requests_are_batched(client, base_url, reference):
    prompts = [f"Q: {i} + {i * 3} = ?" for i in range(8)]
    before = stats(base_url)
    answers = ask_together(client, prompts, max_tokens=8, temperature=0)
    after = stats(base_url)
    for prompt in prompts:
        [[expected]] = reference([prompt], max_new_tokens=8, temperature=0)
        assert answers[prompt].choices[0].text == expected.text
        assert answers[prompt].usage.prompt_tokens == expected.prompt_tokens
    assert after["requests"] - before["requests"] == len(prompts)
    # all eight within one 100 ms window: one call, a few more only on a badly loaded machine
    assert after["generate_calls"] - before["generate_calls"] <= 3
    assert after["max_batch_requests"] >= 3


def test_concurrent_seeded_requests_keep_their_answers(client, base_url, reference):
    """Batched, seeded rows would draw each other's random numbers: each must run alone."""
    prompts = [f"Q: {i} * 2 = ?" for i in range(4)]
    before = stats(base_url)
    answers = ask_together(client, prompts, max_tokens=8, temperature=1.0, seed=11)
    assert stats(base_url)["generate_calls"] - before["generate_calls"] == len(prompts)
    for prompt in prompts:
        [[expected]] = reference([prompt], max_new_tokens=8, temperature=1.0, seed=11)
        assert answers[prompt].choices[0].text == expected.text


# ---------------------------------------------------------------------------------------------
# refusals: OpenAI's error body, a 4xx status, and the server stays up
# ---------------------------------------------------------------------------------------------

def test_api_key_is_required(base_url):
    with pytest.raises(openai.AuthenticationError) as err:
        openai.OpenAI(base_url=base_url, api_key="wrong-key", max_retries=0).models.list()
    assert err.value.status_code == 401 and err.value.code == "invalid_api_key"
    # the openai client refuses to send no key at all; a bare request can
    bare = httpx2.post(f"{base_url}/completions", json={"model": NAME, "prompt": "x"})
    assert bare.status_code == 401 and bare.json()["error"]["type"] == "invalid_request_error"
    assert "didn't provide an API key" in bare.json()["error"]["message"]


def test_malformed_json(client, base_url):
    unparsable = "We could not parse the JSON body of your request"
    for body, says in ((b'{"model": "tiny-chat", "prompt": ', f"{unparsable} (Expecting value: line 1 column 34"),
                       (b"[1, 2]", "The request body must be a JSON object, got list."),
                       (b'{"model": "tiny-chat", "temperature": NaN}', f"{unparsable} (NaN is not valid JSON)"),
                       (b"\xff\xfe", unparsable)):
        response = post(base_url, "/completions", body)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error.pop("message").startswith(says), (body, response.json())
        assert error == {"type": "invalid_request_error", "param": None, "code": "invalid_json"}
    assert client.models.list().data[0].id == NAME


def test_unknown_and_unsupported_fields(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=NAME, prompt="x", max_tokens=2, extra_body={"temprature": 0.5})
    assert err.value.code == "unknown_parameter" and err.value.param == "temprature"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=NAME, messages=chat("x"), max_tokens=2, logprobs=True)
    assert err.value.code == "unsupported_parameter" and "not supported" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=NAME, messages=[{"role": "tool", "content": "x"}], max_tokens=2)
    assert err.value.param == "messages[0].role"
    # off is not a request for the feature
    client.chat.completions.create(model=NAME, messages=chat("x"), max_tokens=2, logprobs=False)


@pytest.mark.parametrize("param, value", [
    ("temperature", -0.1), ("temperature", 2.5), ("top_p", 0), ("top_p", 1.5), ("n", 0), ("n", 17),
    ("max_tokens", 0), ("max_tokens", 257), ("frequency_penalty", 2.5), ("presence_penalty", -3),
    ("stop", ["a", "b", "c", "d", "e"]), ("n", 1.5), ("stream", "yes"),
])
def test_out_of_range(client, param, value):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=NAME, prompt="x", **({"max_tokens": 2} | {param: value}))
    assert err.value.status_code == 400 and err.value.param == param and err.value.code == "invalid_value"


def test_oversized_prompt(client, base_url):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=NAME, prompt="1" * 1100, max_tokens=2)
    assert err.value.code == "context_length_exceeded" and err.value.param == "prompt"
    # fits alone, not with the completion it asks for
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=NAME, messages=chat("1" * 1000), max_tokens=64)
    assert err.value.code == "context_length_exceeded" and "1024" in err.value.message
    huge = post(base_url, "/completions", b'{"model": "tiny-chat", "prompt": "' + b"1" * (2 << 20) + b'"}')
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"
    assert client.models.list().data[0].id == NAME


def test_unknown_model_and_url(client, base_url):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4o", messages=chat("x"), max_tokens=2)
    assert err.value.code == "model_not_found"
    response = httpx2.get(f"{base_url}/embeddings")
    assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_url"


# ---------------------------------------------------------------------------------------------
# the launch helper
# ---------------------------------------------------------------------------------------------

def test_served_without_key_then_stopped(checkpoint):
    with served(checkpoint, env={"RESEARCHER_API_KEY": None}, args=["--served-name", "other"]) as url:
        keyless = openai.OpenAI(base_url=url, api_key="anything", max_retries=0)
        assert [m.id for m in keyless.models.list().data] == ["other"]
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(f"{url}/models", timeout=5)


def test_served_reports_a_server_that_fails(tmp_path):
    with pytest.raises(ServerFailed, match="does not exist"):
        with served(tmp_path / "missing", timeout=60):
            pass
