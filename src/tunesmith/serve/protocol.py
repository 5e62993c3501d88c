"""The OpenAI request bodies this server accepts, bounded, and its error bodies.

Parameters it does not implement are refused by name (400), not silently ignored; the few that
clients send with neutral values by default (penalties 0, user) are accepted."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_MESSAGES = 256
MAX_CHOICES = 8
MAX_STOP = 4
MAX_LOGPROBS = 20  # most likely tokens reported per place (OpenAI's chat limit)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(Strict):
    type: Literal["text"]
    text: str


class CalledFunction(Strict):
    name: str = Field(max_length=64)
    arguments: str = Field(max_length=1 << 16)


class ToolCall(Strict):
    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: CalledFunction


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = Field(None, max_length=MAX_CHOICES * 4)
    tool_call_id: str | None = Field(None, max_length=256)
    reasoning_content: str | None = None  # an earlier assistant turn's reasoning, as this server returned it

    def as_chat(self) -> dict:
        """As the data layer reads a turn (`data/layouts.check_messages` checks it further)."""
        content = (
            self.content
            if isinstance(self.content, str) or self.content is None
            else "".join(p.text for p in self.content)
        )
        turn: dict[str, Any] = {"role": self.role, "content": content}
        if self.tool_calls:
            turn["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.tool_call_id is not None:
            turn["tool_call_id"] = self.tool_call_id
        if self.reasoning_content:
            turn["reasoning_content"] = self.reasoning_content
        return turn


class FunctionSpec(Strict):
    name: str
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None


class Tool(Strict):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(Strict):
    name: str


class NamedTool(Strict):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(Strict):
    include_usage: bool = False


class Sampling(Strict):
    model: str = Field(min_length=1, max_length=256)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, ge=0.0, le=1.0)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stop: str | list[str] | None = Field(None, validate_default=True)
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    user: str | None = Field(None, max_length=256)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    ignore_eos: bool = False  # vLLM's and llama.cpp's extension: always max_tokens tokens (benchmarks)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > MAX_STOP or any(not s or len(s) > 256 for s in stops):
            raise ValueError(f"up to {MAX_STOP} non-empty stop sequences of at most 256 characters")
        return stops

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, v):
        if v != 0:
            raise ValueError("not supported by this server; leave it 0")
        return v


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Tool] | None = Field(None, min_length=1, max_length=128)
    tool_choice: Literal["auto", "none", "required"] | NamedTool | None = None
    parallel_tool_calls: bool = True
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)

    def logprobs_wanted(self) -> int | None:
        """None: no log-probabilities; N: each token's and the N most likely at each place."""
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return (self.top_logprobs or 0) if self.logprobs else None

    def tool_specs(self) -> list[dict] | None:
        return [t.model_dump(exclude_none=True) for t in self.tools] if self.tools else None

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(Sampling):
    # text, texts, or token ids (one prompt, or several), as OpenAI's API takes them: a teacher
    # scoring a student's tokens needs those exact tokens, not a re-encoding of their text
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)  # the completions API's default; 0: only score the prompt (echo)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)  # the legacy API's: how many most likely per token

    def logprobs_wanted(self) -> int | None:
        if self.max_tokens == 0 and not (self.echo and self.logprobs is not None):
            raise ValueError("max_tokens 0 only scores a prompt: it needs echo and logprobs")
        return self.logprobs

    def prompts(self) -> list[str | list[int]]:
        if isinstance(self.prompt, str) or (self.prompt and isinstance(self.prompt[0], int)):
            return [self.prompt]
        return [p for p in self.prompt if not isinstance(p, int)]  # a list of prompts

    def limit(self) -> int | None:
        return self.max_tokens

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, v):
        if isinstance(v, list) and v and isinstance(v[0], int):
            return v  # one prompt's token ids
        if isinstance(v, list) and not 1 <= len(v) <= MAX_CHOICES:
            raise ValueError(f"a list of 1 to {MAX_CHOICES} prompts")
        return v


def error_body(
    message: str, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class ApiError(Exception):
    """A request refused with OpenAI's error body and an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.body = status, error_body(message, kind, param, code)


def gone_body(model_id: str) -> dict:
    return error_body(f"The model `{model_id}` does not exist (it was removed)", param="model", code="model_not_found")
