"""Request bodies (pydantic) for the OpenAI-compatible endpoints, and the error shape.

Bodies are lenient the way OpenAI's are: unknown fields are ignored (clients send `user`, `tools`, ...),
but a known field of the wrong type is a 400 naming the field. Bounds that need the model (context
length) are checked in app.py; bounds on sampling values live in `SamplingParams.validate()` so the CLI
and the server reject the same things.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

Number = StrictInt | StrictFloat


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(_Body):
    type: StrictStr
    text: StrictStr | None = None


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[ContentPart] | None = None
    name: StrictStr | None = None


class StreamOptions(_Body):
    include_usage: StrictBool | None = False


class _Sampling(_Body):
    """Fields both completion endpoints share (OpenAI's, then the chinwag/vLLM extras)."""

    model: StrictStr | None = None
    temperature: Number | None = Field(None, ge=0, le=100)  # OpenAI: 0..2; llama.cpp: unbounded
    top_p: Number | None = None
    max_tokens: StrictInt | None = Field(None, ge=1)
    stop: StrictStr | list[StrictStr] | None = None
    n: StrictInt | None = Field(1, ge=1, le=16)
    seed: StrictInt | None = None
    presence_penalty: Number | None = Field(None, ge=-2, le=2)  # OpenAI's range
    frequency_penalty: Number | None = Field(None, ge=-2, le=2)
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    top_k: StrictInt | None = None
    min_p: Number | None = None
    repetition_penalty: Number | None = Field(None, gt=0, le=10)
    logit_bias: dict[str, Annotated[Number, Field(ge=-100, le=100)]] | None = None  # OpenAI's range


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage]
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    logprobs: StrictBool | None = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20)
    conversation_id: StrictStr | None = None  # chinwag extra: continue a stored conversation


class CompletionRequest(_Sampling):
    prompt: StrictStr | list[StrictStr]
    logprobs: StrictInt | None = Field(None, ge=0, le=20)  # legacy API: an int (top-n), not a bool
    echo: StrictBool | None = False


def error_body(
    message: str, type: str = "invalid_request_error", code: int = 400, param: str | None = None, **extra: Any
) -> dict:
    """OpenAI's error shape with llama.cpp's type strings and the int status as `code`."""
    return {"error": {"message": message, "type": type, "param": param, "code": code, **extra}}


ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    501: "not_supported_error",
    503: "unavailable_error",
}


class APIError(Exception):
    """Raised anywhere in a handler; app.py turns it into the JSON error body with this status."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str | None = None,
        param: str | None = None,
        headers: dict | None = None,
        **extra: Any,
    ):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.type = type or ERROR_TYPES.get(status, "invalid_request_error")
        self.headers, self.extra = headers, extra

    def body(self) -> dict:
        return error_body(self.message, self.type, self.status, self.param, **self.extra)
