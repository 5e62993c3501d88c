"""The inference routes: models, chat and text completions, health and metrics. What they work
on (`Serving`: the catalog of models, the limits, the queue) is the app's state; each handler
takes it and the caller as dependencies."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from tunesmith.serve import logprobs as logprobs_shapes
from tunesmith.serve.models import ServedModels
from tunesmith.serve.protocol import ApiError, ChatRequest, CompletionRequest
from tunesmith.serve.replies import answer, plain_deltas
from tunesmith.serve.tool_replies import ToolReplies

router = APIRouter()


def serving(request: Request):
    """The server's catalog, limits and queue (serve/app.Serving)."""
    return request.app.state.serving


def caller(request: Request) -> str | None:
    """Who the request's key belongs to (the guard in serve/app.py resolved it; None without keys)."""
    return request.state.caller


def known(serving, model_id: str, who: str | None) -> ServedModels:
    """The holder serving `model_id` to `who` (404 when it is not there, or not theirs)."""
    served = serving.catalog.holder(model_id, who)
    if served is None:
        raise ApiError(
            404,
            f"The model `{model_id}` does not exist; this server has: {', '.join(serving.catalog.visible_ids(who))}",
            param="model",
            code="model_not_found",
        )
    return served


def card(serving, model_id: str) -> dict:
    return {
        "id": model_id,
        "object": "model",
        "created": serving.created,
        "owned_by": "tunesmith",
        "root": model_id,
        "parent": serving.catalog.parent(model_id),
    }


@router.get("/health")
def health(s=Depends(serving)):
    return {"status": "ok", "models": s.catalog.visible_ids(None), "requests": s.queue.count}  # running + waiting


@router.get("/metrics")
def metrics(s=Depends(serving)):
    from tunesmith.serve.metrics import render

    return Response(render(s.catalog.engines), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/v1/models")
def models(s=Depends(serving), who: str | None = Depends(caller)):
    return {"object": "list", "data": [card(s, m) for m in s.catalog.visible_ids(who)]}


@router.get("/v1/models/{model_id:path}")
def model(model_id: str, s=Depends(serving), who: str | None = Depends(caller)):
    known(s, model_id, who)
    return card(s, model_id)


@router.post("/v1/chat/completions")
def chat_completions(req: ChatRequest, s=Depends(serving), who: str | None = Depends(caller)):
    from tunesmith.data.chat import prompt_ids
    from tunesmith.eval.constrained import call_grammar

    served = known(s, req.model, who)
    tokenizer = served.tokenizer(req.model)
    tools, messages = checked_chat(req)
    replies = ToolReplies(tools, req.tool_choice, req.parallel_tool_calls)
    try:
        prompt = prompt_ids(tokenizer, messages, tools)
    except Exception as e:  # the chat template refused these messages (e.g. roles out of order)
        raise ApiError(
            400, f"messages: the chat template refused them ({str(e).splitlines()[0][:200]})", param="messages"
        ) from None
    forced = replies.forced()
    grammar = call_grammar(tools or [], forced[1], forced[0]) if forced else None

    def whole(text: str, reason: str):
        message, reason = replies.message(text, reason)
        return {"message": message}, reason

    def deltas(pieces):
        for delta, reason, finished in replies.deltas(pieces):
            yield {"delta": delta}, reason, finished

    return answer(
        s,
        served,
        req,
        [prompt],
        "chat.completion.chunk" if req.stream else "chat.completion",
        deltas,
        whole,
        grammar,
        shape=lambda entries, tokenizer, offset: logprobs_shapes.chat(entries, tokenizer),
    )


def checked_chat(req: ChatRequest) -> tuple[list[dict] | None, list[dict]]:
    """The request's tools and messages, checked as training data is (400 naming the parameter)."""
    from tunesmith.data.layouts import check_messages
    from tunesmith.data.tool_calls import check_tools

    tools = req.tool_specs()
    try:
        tools = check_tools(tools) if tools else None
    except ValueError as e:
        raise ApiError(400, str(e), param="tools") from None
    choice = req.tool_choice
    if choice not in (None, "auto", "none") and not tools:
        raise ApiError(400, "tool_choice asks for a call, but the request has no tools", param="tool_choice")
    if (
        choice is not None
        and not isinstance(choice, str)
        and choice.function.name not in {t["function"]["name"] for t in tools or []}
    ):
        raise ApiError(
            400, f"tool_choice names {choice.function.name!r}, which is not among the tools", param="tool_choice"
        )
    try:
        messages = check_messages(
            [m.as_chat() for m in req.messages], "messages", need_assistant=False, tools=tools, system_first=False
        )
    except ValueError as e:
        raise ApiError(400, str(e), param="messages") from None
    return tools, messages


@router.post("/v1/completions")
def completions(req: CompletionRequest, s=Depends(serving), who: str | None = Depends(caller)):
    served = known(s, req.model, who)
    tokenizer = served.tokenizer(req.model)
    prompts = [list(p) if isinstance(p, list) else tokenizer(p)["input_ids"] for p in req.prompts()]
    if any(not p for p in prompts):
        raise ApiError(400, "prompt: empty", param="prompt")
    vocab = served.model.config.vocab_size
    if any(t < 0 or t >= vocab for p in prompts for t in p):
        raise ApiError(400, f"prompt: token ids must be in 0..{vocab - 1}", param="prompt")
    return answer(
        s,
        served,
        req,
        prompts,
        "text_completion",
        plain_deltas("text"),
        lambda text, reason: ({"text": text}, reason),
        shape=lambda entries, tokenizer, offset: logprobs_shapes.completion(
            entries, tokenizer, req.logprobs or 0, offset
        ),
        echoed=[p if isinstance(p, str) else tokenizer.decode(p) for p in req.prompts()] if req.echo else None,
    )
