"""Interactive chat: the model's chat template, history kept, replies streamed as they are generated."""

from __future__ import annotations

import sys
import threading

import torch
from rich.console import Console

from tunesmith.data.chat import prompt_ids
from tunesmith.eval.generate import Sampling, generate_ids


def stream_reply(model, tokenizer, messages: list[dict], sampling: Sampling, write=sys.stdout.write, flush=sys.stdout.flush) -> str:
    """Generate one reply, writing text pieces as soon as they decode; returns the whole reply."""
    from transformers import TextIteratorStreamer

    ids = torch.tensor([prompt_ids(tokenizer, messages)], device=next(model.parameters()).device)
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


def chat_loop(model, tokenizer, sampling: Sampling, system: str | None = None, console: Console | None = None,
              read=input) -> list[dict]:
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
        history.append({"role": "assistant", "content": stream_reply(model, tokenizer, history, sampling)})
    return history
