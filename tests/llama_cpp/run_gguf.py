"""Runs inside the llama-cpp-python environment: a GGUF file read by llama.cpp itself.

stdin: {"model": path, "prompts": [[token ids], ...] or ["text", ...] or [[messages], ...],
        "mode": "greedy" | "logits" | "tokenize" | "chat", "max_tokens": n, "n_ctx": n, "logits_file": path}
stdout: greedy token ids per prompt (up to EOS or max_tokens), every position's logits (one array
per prompt in the .npy file `logits_file`: JSON text would be gigabytes for a large vocabulary), each
text's token ids as llama.cpp's tokenizer reads the file (BOS added as the file says), or the
greedy reply text of a chat completion (the prompt rendered with the file's chat template).
"""

import json
import sys

import numpy as np
from llama_cpp import Llama

job = json.load(sys.stdin)
llm = Llama(
    model_path=job["model"], n_ctx=job.get("n_ctx", 512), n_threads=2, verbose=False, logits_all=job["mode"] == "logits"
)
out = []
for prompt in job["prompts"]:
    llm.reset()
    if job["mode"] == "chat":
        reply = llm.create_chat_completion(prompt, temperature=0.0, top_k=1, max_tokens=job["max_tokens"])
        out.append(reply["choices"][0]["message"]["content"])
        continue
    if job["mode"] == "tokenize":
        out.append(
            llm.tokenize(
                prompt.encode("utf-8"), add_bos=llm.metadata.get("tokenizer.ggml.add_bos_token") == "true", special=True
            )
        )
        continue
    if job["mode"] == "logits":
        llm.eval(prompt)
        out.append(np.array(llm.scores[: len(prompt)], dtype=np.float32))
        continue
    tokens = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        if token == llm.token_eos() or len(tokens) >= job["max_tokens"]:
            break
        tokens.append(token)
    out.append(tokens)
if job["mode"] == "logits":
    np.save(job["logits_file"], np.stack(out))
    out = job["logits_file"]
json.dump(out, sys.stdout)
