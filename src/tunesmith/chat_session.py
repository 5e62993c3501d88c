"""Interactive chat: the model's chat template, history kept, replies streamed as they are generated.

With tools (`tunesmith chat --tools FILE`), they are rendered as in training; a reply that calls
them is kept as the assistant's calls, the user is asked for each call's result (a `tool` turn),
and the model answers again with the results in its history.
"""

from __future__ import annotations

import sys
import threading

import torch
from rich.console import Console

from tunesmith.data.chat import prompt_ids
from tunesmith.data.tool_format import parse_reply
from tunesmith.eval.generate import Sampling, generate_ids


def stream_reply(
    model,
    tokenizer,
    messages: list[dict],
    sampling: Sampling,
    write=sys.stdout.write,
    flush=sys.stdout.flush,
    tools: list[dict] | None = None,
) -> str:
    """Generate one reply, writing text pieces as soon as they decode; returns the whole reply."""
    from transformers import TextIteratorStreamer

    ids = torch.tensor([prompt_ids(tokenizer, messages, tools)], device=next(model.parameters()).device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = dict(streamer=streamer, **sampling.kwargs(tokenizer))
    worker = threading.Thread(target=lambda: generate_ids(model, ids, torch.ones_like(ids), **kwargs), daemon=True)
    worker.start()
    pieces = []
    for piece in streamer:
        pieces.append(piece)
        write(piece)
        flush()
    worker.join()
    write("\n")
    flush()
    return "".join(pieces).strip()


def assistant_turn(reply: str, tools: list[dict] | None, count: int) -> dict:
    """The reply as the history keeps it: its calls, where it makes any, else its text."""
    read = parse_reply(reply, {t["function"]["name"] for t in tools}) if tools else None
    if read is None or not read.calls:
        return {"role": "assistant", "content": reply}
    calls = [{**c, "id": f"call_{count}_{i}"} for i, c in enumerate(read.calls)]
    return {"role": "assistant", "content": read.content, "tool_calls": calls}


def chat_loop(
    model,
    tokenizer,
    sampling: Sampling,
    system: str | None = None,
    console: Console | None = None,
    read=input,
    tools: list[dict] | None = None,
) -> list[dict]:
    console = console or Console(stderr=True, soft_wrap=True)
    base = [{"role": "system", "content": system}] if system else []
    history = list(base)
    console.print("[dim]chat: type a message; /reset clears the history, /exit or Ctrl-D leaves[/dim]")
    while True:
        try:
            line = read("you> ")
        except EOFError:
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history = list(base)
            console.print("[dim]history cleared[/dim]")
            continue
        history.append({"role": "user", "content": text})
        sys.stdout.write("assistant> ")
        turn = assistant_turn(stream_reply(model, tokenizer, history, sampling, tools=tools), tools, len(history))
        history.append(turn)
        while turn.get("tool_calls"):
            try:
                for call in turn["tool_calls"]:
                    result = read(f"result of {call['function']['name']}({call['function']['arguments']})> ")
                    history.append({"role": "tool", "tool_call_id": call["id"], "content": result})
            except EOFError:
                return history
            sys.stdout.write("assistant> ")
            turn = assistant_turn(stream_reply(model, tokenizer, history, sampling, tools=tools), tools, len(history))
            history.append(turn)
    return history
