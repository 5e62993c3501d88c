"""Fine-tuning code written for OpenAI's API, run against `tunesmith service` by changing base_url.

    python client.py BASE_URL [--home DIR] [--record --started EPOCH_SECONDS]

The first half is what a team already has (upload, create a job with "auto" hyperparameters,
follow its events, chat with the fine-tune); it runs as it is. The second half measures the result
through the same API: the date task's test split asked of the fine-tune, of the base model
zero-shot and of the base model with three examples in the prompt (prompting instead of tuning),
exact match with 95% bootstrap intervals. With --record the table goes to
results/openai-migration-<machine>.json, which README's table is rendered from.
"""

import argparse
import json
import time
from pathlib import Path

from openai import OpenAI

RESULTS = Path(__file__).resolve().parent.parent.parent / "results"
BASE = "smollm2-135m-instruct"


def fine_tune(client: OpenAI, train: Path, val: Path) -> tuple[str, str, float]:
    """OpenAI's own fine-tuning flow, unchanged: returns (job id, fine-tuned model, minutes)."""
    training_file = client.files.create(file=open(train, "rb"), purpose="fine-tune")
    validation_file = client.files.create(file=open(val, "rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=BASE, training_file=training_file.id,
                                         validation_file=validation_file.id, suffix="dates")
    print(f"created {job.id} ({job.status})")
    seen, started = set(), time.time()
    while job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(5)
        job = client.fine_tuning.jobs.retrieve(job.id)
        for event in reversed(client.fine_tuning.jobs.list_events(job.id, limit=20).data):
            if event.id not in seen and (event.type != "metrics" or event.data["step"] % 20 == 0):
                print(f"  {event.message}")
            seen.add(event.id)
    if job.status != "succeeded":
        raise SystemExit(f"{job.id} {job.status}: {job.error}")
    print(f"{job.fine_tuned_model}: hyperparameters {job.hyperparameters.model_dump()}, "
          f"{job.trained_tokens} tokens trained")
    return job.id, job.fine_tuned_model, (job.finished_at - job.created_at) / 60 if job.finished_at else (time.time() - started) / 60


def ask(client: OpenAI, model: str, messages: list[dict]) -> str:
    reply = client.chat.completions.create(model=model, messages=messages, max_tokens=16, temperature=0)
    return reply.choices[0].message.content or ""


def score(client: OpenAI, model: str, test: list[dict], shots: list[dict]) -> list[float]:
    """1 where the reply is exactly the reference date (after trimming), per test example."""
    from tunesmith.eval.metrics import normalized_exact_match

    prefix = [m for shot in shots for m in shot["messages"]]
    return [normalized_exact_match(ask(client, model, prefix + row["messages"][:-1]), row["messages"][-1]["content"])
            for row in test]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base_url")
    ap.add_argument("--data", type=Path, default=Path("work/data"))
    ap.add_argument("--home", type=Path, default=Path("work/home"), help="the service's --home (for the forgetting probe)")
    ap.add_argument("--started", type=float, help="when the example started (seconds since the epoch), for its total time")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    client = OpenAI(base_url=args.base_url, api_key="unused")
    job_id, model, minutes = fine_tune(client, args.data / "train.jsonl", args.data / "val.jsonl")

    from tunesmith.eval.bootstrap import bootstrap_ci, paired_bootstrap_ci
    from tunesmith.provenance import write_results

    test = [json.loads(line) for line in (args.data / "test.jsonl").read_text().splitlines()]
    train = [json.loads(line) for line in (args.data / "train.jsonl").read_text().splitlines()]
    per = {"zero-shot": score(client, BASE, test, []), "3-shot": score(client, BASE, test, train[:3]),
           "fine-tuned": score(client, model, test, [])}
    rows = {k: bootstrap_ci(v) for k, v in per.items()}
    summary = json.loads((args.home / "runs" / job_id / "summary.json").read_text())
    job = client.fine_tuning.jobs.retrieve(job_id)
    table = {"rows": rows, "tuned_minus_3_shot": paired_bootstrap_ci(per["3-shot"], per["fine-tuned"]),
             "job_minutes": round(minutes, 2), "train_examples": len(train), "test_examples": len(test),
             "hyperparameters": job.hyperparameters.model_dump(), "steps": summary["steps"],
             "general_qa": {**{k: summary["forgetting"]["qa"][k]["mean"] for k in ("base", "tuned")},
                            "questions": summary["forgetting"]["qa"]["tuned"]["n"]} if "forgetting" in summary else None}
    for label, s in rows.items():
        print(f"{label}: exact match {s['mean']:.1%} ({s['lo']:.1%}-{s['hi']:.1%})")
    print(f"job: {minutes:.1f} minutes, {summary['steps']} steps")
    if args.record:
        seconds = time.time() - args.started if args.started else None
        print(f"recorded in {write_results(RESULTS, 'openai-migration', table, seconds)}")


if __name__ == "__main__":
    main()
