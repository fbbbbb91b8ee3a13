"""The request bodies `researcher serve` accepts, and OpenAI's error body for everything it refuses.

A body is parsed here in one step, `parse_request(raw_bytes, ChatRequest)`, which either returns
a validated request or raises `APIError` carrying the status and the error body OpenAI would send:

    {"error": {"message": "...", "type": "invalid_request_error", "param": "temperature", "code": "invalid_value"}}

Validation is strict, as OpenAI's is: `"n": 1.0` or `"stream": "yes"` are refused, not coerced,
and a field we do not know is refused rather than ignored. Fields OpenAI knows but this server
does not implement (`logprobs`, `tools`, `response_format`, ...) get their own "not supported"
message; sent as null or false they ask for nothing and are accepted. Limits that depend on the
served model (n, max_tokens, the context length) are checked by the app, which knows them.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class APIError(Exception):
    """A refusal with OpenAI's error body; the app turns it into the HTTP response."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ---------------------------------------------------------------------------------------------
# Request bodies
# ---------------------------------------------------------------------------------------------

StopString = Annotated[str, Field(min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False  # a last chunk with the usage counts and no choices


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: list[TextPart]  # a plain string arrives here as one text part

    @field_validator("content", mode="before")
    @classmethod
    def _string_is_one_part(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [{"type": "text", "text": value}]
        if not isinstance(value, list):
            raise ValueError("content must be a string or a list of text parts")
        return value

    @property
    def text(self) -> str:
        return "".join(part.text for part in self.content)


class _Request(_Strict):
    """The knobs both endpoints share; null means the default, as in OpenAI's API."""

    # OpenAI request fields this server does not implement: a clear refusal, never a silent no-op.
    unsupported: ClassVar[frozenset[str]] = frozenset({"logprobs", "logit_bias"})

    model: str
    n: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    stop: list[StopString] | None = Field(None, max_length=4)
    # OpenAI takes any 64-bit seed; torch's generator takes this whole range once made unsigned
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None  # an end-user id for OpenAI's abuse monitoring: changes no output

    @field_validator("stop", mode="before")
    @classmethod
    def _string_is_one_stop(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [value]
        if value is not None and not isinstance(value, list):
            raise ValueError("stop must be a string or a list of at most 4 strings")
        return value


class ChatRequest(_Request):
    unsupported: ClassVar[frozenset[str]] = _Request.unsupported | frozenset({
        "top_logprobs", "tools", "tool_choice", "parallel_tool_calls", "functions", "function_call",
        "response_format", "audio", "modalities", "prediction", "reasoning_effort", "verbosity",
        "web_search_options", "metadata", "store", "service_tier", "moderation", "prompt_cache_key",
        "prompt_cache_options", "prompt_cache_retention", "safety_identifier",
    })

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # OpenAI's newer name for max_tokens


class CompletionRequest(_Request):
    unsupported: ClassVar[frozenset[str]] = _Request.unsupported | frozenset({"echo", "suffix", "best_of"})

    prompt: list[str] = Field(min_length=1)  # a single string arrives here as a list of one

    @field_validator("prompt", mode="before")
    @classmethod
    def _string_is_one_prompt(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list):
            raise ValueError("prompt must be a string or a list of strings (token arrays are not supported)")
        return value


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------

def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _param(loc: tuple) -> str:
    """A pydantic error location as a parameter path: messages[0].content."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _validation_error(err: ValidationError) -> APIError:
    """The first problem pydantic found, worded as OpenAI words it."""
    first = err.errors(include_url=False)[0]
    param = _param(first["loc"])
    if first["type"] == "extra_forbidden":
        return APIError(400, f"Unrecognized request argument supplied: {param}", param=param,
                        code="unknown_parameter")
    if first["type"] == "missing":
        return APIError(400, f"Missing required parameter: '{param}'.", param=param,
                        code="missing_required_parameter")
    message = first["msg"].removeprefix("Value error, ")
    return APIError(400, f"Invalid value for '{param}': {message}.", param=param, code="invalid_value")


def parse_request(raw: bytes, model: type[_Request]) -> _Request:
    """Validate a raw JSON body as `model`; raises `APIError` (400) on any problem."""
    try:
        data = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as err:
        raise APIError(400, f"We could not parse the JSON body of your request ({err}). The body must be "
                       "a JSON object, sent with Content-Type: application/json.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, f"The request body must be a JSON object, got {type(data).__name__}.",
                       code="invalid_json")
    for name in sorted(model.unsupported & data.keys()):
        if data[name] is None or data[name] is False:
            del data[name]  # asks for nothing
        else:
            raise APIError(400, f"'{name}' is not supported by this server; leave it out.", param=name,
                           code="unsupported_parameter")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise _validation_error(err) from None
