"""Runs inside the llama-cpp-python environment: a GGUF file read by llama.cpp itself.

stdin: {"model": path, "prompts": [[token ids], ...], "mode": "greedy" | "logits", "max_tokens": n}
stdout: greedy token ids per prompt (up to EOS or max_tokens), or every position's logits.
"""

import json
import sys

from llama_cpp import Llama

job = json.load(sys.stdin)
llm = Llama(model_path=job["model"], n_ctx=512, n_threads=2, verbose=False, logits_all=job["mode"] == "logits")
out = []
for ids in job["prompts"]:
    llm.reset()
    if job["mode"] == "logits":
        llm.eval(ids)
        out.append(llm.scores[: len(ids)].tolist())
        continue
    tokens = []
    for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        if token == llm.token_eos() or len(tokens) >= job["max_tokens"]:
            break
        tokens.append(token)
    out.append(tokens)
json.dump(out, sys.stdout)
