"""Each task adapter and each merge of the two, scored on both tasks and probed for forgetting,
the same way a run scores itself (run/evaluate.py): writes WORK/merges.json.

    python measure_merges.py work
"""

import json
import sys
from pathlib import Path

from rich.console import Console

from tunesmith.config import load_config
from tunesmith.data.records import load_examples
from tunesmith.eval.task import evaluate_task
from tunesmith.forgetting.reference import BaseReference
from tunesmith.model.load import load_for_inference
from tunesmith.model.resolve import resolve
from tunesmith.run.evaluate import probe_forgetting
from tunesmith.runtime.precision import inference_dtype

work = Path(sys.argv[1] if len(sys.argv) > 1 else "work")
dates_cfg = load_config(work / "runs" / "dates" / "variants" / "lora" / "config.yaml")
tasks = {"dates": (work / "data" / "dates" / "test.jsonl", 16, "exact_match"),
         "tools": (work / "data" / "tools" / "test.jsonl", 128, "tool_call_exact")}
models = {"dates LoRA": work / "runs" / "dates" / "variants" / "lora", "tools LoRA": work / "runs" / "tools",
          **{f"merged: {p.name}": p for p in sorted((work / "merged").iterdir())}}
dtype = inference_dtype(dates_cfg.train.precision)
base = BaseReference(resolve(dates_cfg.model), dtype)
console = Console(stderr=True)
results = {}
for label, path in models.items():
    console.print(f"[bold]{label}[/bold]: both tasks and the forgetting probe ...")
    model, tokenizer = load_for_inference(str(path), dtype=dtype)
    out = work / "merge-eval" / label.replace(": ", "-").replace(" ", "-")
    row = {"path": str(path), "tasks": {}}
    for task, (test, max_new, metric) in tasks.items():
        result = evaluate_task(model, tokenizer, load_examples(str(test))[:100], label=label, max_new_tokens=max_new,
                               latency_samples=0, predictions_path=out / f"{task}_predictions.jsonl")
        row["tasks"][task] = {"metric": metric, **result["scores"][metric]}
    row["forgetting"] = probe_forgetting(dates_cfg, out, model, tokenizer, base, console)["qa"]
    results[label] = row
    del model
(work / "merges.json").write_text(json.dumps(results, indent=2))
print(json.dumps({k: {t: round(v["mean"], 3) for t, v in r["tasks"].items()} | {"qa": round(r["forgetting"]["tuned"]["mean"], 3)}
                  for k, r in results.items()}, indent=2))
