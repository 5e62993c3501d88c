"""Log-probabilities in the shapes OpenAI's two APIs return them.

Chat: `{"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}],
"refusal": null}`. Completions (the legacy shape, which a distillation teacher is read through):
`{"tokens", "token_logprobs", "top_logprobs": [{token: logprob}], "text_offset"}`, the prompt's
tokens first under `echo` (its first token has no log-probability). A token's text is what it adds
to the reply; an alternative's is the token decoded alone."""

from __future__ import annotations

from tunesmith.serve.generation import TokenEntry


def _alternatives(tokenizer, top: list[tuple[int, float]] | None) -> list[tuple[str, float]]:
    return [(tokenizer.decode([t]), lp) for t, lp in (top or [])]


def chat(entries: list[TokenEntry], tokenizer) -> dict:
    content = []
    for e in entries:
        content.append(
            {
                "token": e.text,
                "logprob": e.logprob,
                "bytes": list(e.text.encode()),
                "top_logprobs": [
                    {"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in _alternatives(tokenizer, e.top)
                ],
            }
        )
    return {"content": content, "refusal": None}


def completion(entries: list[TokenEntry], tokenizer, top: int, offset: int = 0) -> dict:
    """`offset`: where the entries' text starts in the returned text (after an echoed prompt)."""
    return {
        "tokens": [e.text for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [
            (_by_text(_alternatives(tokenizer, e.top)) if e.top is not None else None) if top else None for e in entries
        ],
        "text_offset": [offset + e.offset for e in entries],
    }


def _by_text(alternatives: list[tuple[str, float]]) -> dict[str, float]:
    """The legacy shape keys alternatives by text: where two tokens read the same (a byte of a
    character, say), the more likely one's is kept."""
    out: dict[str, float] = {}
    for text, logprob in alternatives:
        out.setdefault(text, logprob)
    return out
