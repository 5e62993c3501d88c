"""A reply to a request with `tools`, shaped as OpenAI's: calls read from the text become
`message.tool_calls` with `finish_reason: "tool_calls"`, whole or as streamed tool-call deltas.

`tool_choice`: `auto` (default) reads calls if the reply makes any; `none` never does (the reply
is text as written); `required` or a named function decodes under the call grammar
(`eval/constrained.py`), so the reply is a call. A reply whose call blocks do not parse is
returned as text, never as a broken call. When streaming, text before the first call block goes
out as it is made; from the block on (or a reply that opens with `{`, perhaps a bare JSON call)
the text is held until the reply ends, then sent as tool-call deltas (each call's id, type and
name, then its arguments in pieces) or, if it does not parse, as content.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

from tunesmith.data.reasoning import Thought, split_reply, split_stream
from tunesmith.data.tool_format import CALL_OPEN, parse_reply
from tunesmith.serve.generation import Finished

ARGUMENT_PIECE = 24  # characters of arguments per streamed delta


class ToolReplies:
    def __init__(self, tools: list[dict] | None, choice, parallel: bool):
        self.tools = tools or []
        self.names = {t["function"]["name"] for t in self.tools}
        self.choice = choice if isinstance(choice, str) or choice is None else {"function": choice.function.name}
        self.parallel = parallel
        self.active = bool(self.tools) and self.choice != "none"

    def forced(self) -> tuple[bool, str | None] | None:
        """(parallel, function name) when decoding must produce a call; None under auto/none."""
        if not self.active or self.choice in (None, "auto"):
            return None
        return self.parallel, (self.choice["function"] if isinstance(self.choice, dict) else None)

    def _calls(self, text: str) -> tuple[str, list[dict]]:
        reply = parse_reply(text, self.names)
        calls = reply.calls if self.parallel else reply.calls[:1]
        return reply.content, [{"id": f"call_{uuid.uuid4().hex[:24]}", **c} for c in calls]

    def message(self, text: str, reason: str) -> tuple[dict, str]:
        """The whole reply's `message` and finish reason; a leading `<think>` block goes to
        `reasoning_content`, as OpenAI-compatible servers return reasoning."""
        thought, text = split_reply(text)
        extra = {"reasoning_content": thought} if thought is not None else {}
        if self.active:
            content, calls = self._calls(text)
            if calls:
                return {"role": "assistant", "content": content or None, **extra, "tool_calls": calls}, "tool_calls"
        return {"role": "assistant", "content": text, **extra}, reason

    def deltas(self, pieces: Iterator[str | Finished]) -> Iterator[tuple[dict, str | None, Finished | None]]:
        """(delta, finish reason, the Finished item at the end) for each streamed chunk; reasoning
        as `reasoning_content` deltas while its block lasts."""
        text, sent, holding = "", 0, False
        for item in split_stream(pieces):
            if isinstance(item, Thought):
                yield {"reasoning_content": str(item)}, None, None
                continue
            if isinstance(item, Finished):
                if holding:
                    content, calls = self._calls(text)
                    if calls:
                        for i, call in enumerate(calls):
                            fn = call["function"]
                            yield (
                                {
                                    "tool_calls": [
                                        {
                                            "index": i,
                                            "id": call["id"],
                                            "type": "function",
                                            "function": {"name": fn["name"], "arguments": ""},
                                        }
                                    ]
                                },
                                None,
                                None,
                            )
                            for k in range(0, len(fn["arguments"]), ARGUMENT_PIECE):
                                piece = fn["arguments"][k : k + ARGUMENT_PIECE]
                                yield {"tool_calls": [{"index": i, "function": {"arguments": piece}}]}, None, None
                        yield {}, "tool_calls", item
                        return
                if len(text) > sent:
                    yield {"content": text[sent:]}, None, None
                yield {}, item.reason, item
                return
            text += item
            if not self.active or holding:
                if not self.active:
                    yield {"content": item}, None, None
                    sent = len(text)
                continue
            start = text.find(CALL_OPEN, sent)
            if start >= 0 or (sent == 0 and text.lstrip().startswith("{")):
                holding = True
                start = sent if start < 0 else start
                if start > sent:
                    yield {"content": text[sent:start]}, None, None
                sent = start
                continue
            safe = len(text) - (len(CALL_OPEN) - 1)  # the start of a block may be split across pieces
            if safe > sent and not (sent == 0 and not text.strip()):
                yield {"content": text[sent:safe]}, None, None
                sent = safe
