"""README and manual tables generated from committed results files, never typed.

Every measured figure in README.md, the manual (docs/*.md) and bench/README.md stands between a
pair of markers

    <!-- generated: NAME from RESULTS (make results-table) -->
    ...
    <!-- end: NAME -->

and is rendered here from the JSON file(s) the marker names. Usage:

    python tools/readme_tables.py record quickstart/runs/dates   # add a quickstart run to results/
    python tools/readme_tables.py                                # rewrite the generated blocks
    python tools/readme_tables.py --check                        # exit 1 if a page differs from them

A results file records the commit, versions and machine each number came from
(`tunesmith.provenance`); `record` refuses a run without them.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

from tunesmith.provenance import kernels_limited

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BENCH_README = ROOT / "bench" / "README.md"  # the benchmark's own tables, the same way
DOCS = ROOT / "docs"


def documents() -> list[Path]:
    """Every page that may hold generated blocks."""
    return [README, BENCH_README, *sorted(DOCS.glob("*.md"))]


RESULTS = ROOT / "results"
BLOCK = re.compile(
    r"(<!-- generated: (?P<name>[\w-]+) from (?P<source>\S+) \(make results-table\) -->\n)"
    r"(?P<body>.*?)(<!-- end: (?P=name) -->)",
    re.S,
)
MACHINE_ORDER = ["avx512-bf16", "avx2-fp32", "avx2-fp32-emulated"]


def describe(machine: dict) -> str:
    """The machine as its provenance says, including kernels limited below what the CPU has."""
    limited = kernels_limited(machine)
    kernels = (
        f"{machine['torch_cpu_capability']} kernels only (limited by "
        f"{', '.join(machine.get('kernel_limits', {})) or 'environment'}, "
        "as on a CPU without AVX-512)"
        if limited
        else f"{machine['torch_cpu_capability']} kernels"
    )
    cpu = machine["cpu"] + (
        f" (family {machine['cpu_family']} model {machine['cpu_model']})"
        if machine.get("cpu_family") is not None
        else ""
    )
    return f"{cpu}, {machine['cpus']} cores, flags {' '.join(machine['cpu_flags'])}, {kernels}"


_PCT = "{:.1%}"


def _pct(x: float) -> str:
    return _PCT.format(x)


def _span(values: list[float], fmt: str) -> str:
    """One value, or the range of several runs (one value where they round alike)."""
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return lo if lo == hi else f"{lo}–{hi}"


def _commit(commit: str) -> str:
    """A commit as the README shows it: short, and marked when the code differed from it."""
    return commit[:10] + ("+dirty" if commit.endswith("+dirty") else "")


def _pts(x: float) -> str:
    return f"{x * 100:+.1f}".replace("-", "−")


def _signed(x: float, digits: int = 3) -> str:
    return f"{x:+.{digits}f}".replace("-", "−")


# --- quickstart ------------------------------------------------------------------------------

DEFAULT_MODEL = "smollm2-135m-instruct"


def quickstart_runs(model: str = DEFAULT_MODEL) -> dict[str, list[dict]]:
    """Recorded quickstart runs of one model by machine tag, in the order they were recorded."""
    out: dict[str, list[dict]] = {}
    for path in sorted(RESULTS.glob("quickstart-*.json")):
        data = json.loads(path.read_text())
        if data.get("model", DEFAULT_MODEL) == model:
            out[data["machine_tag"]] = data["runs"]
    return dict(sorted(out.items(), key=lambda kv: MACHINE_ORDER.index(kv[0]) if kv[0] in MACHINE_ORDER else 99))


def _variant_label(label: str) -> str:
    return {
        "zero-shot": "base model, zero-shot",
        "3-shot": "base model, 3-shot",
        "tuned: lora": "LoRA",
        "tuned: lora-replay": "LoRA + 25% self-replay",
    }.get(label, label)


def render_quickstart() -> str:
    machines = quickstart_runs()
    tag, runs = next(iter(machines.items()))
    run = runs[-1]
    t = run["tables"]
    train = {r["variant"]: r for r in t["training"]}
    lora = train["lora"]
    lines = [
        f"The latest run on {tag} ({describe(run['provenance']['machine'])}), commit "
        f"{_commit(run['provenance']['commit'])} "
        f"(SmolLM2-135M-Instruct, LoRA r=16 on all linear layers, {lora['trainable_parameters'] / 1e6:.1f}M "
        f"trainable parameters, {lora['steps']} steps of batch 8, {lora['precision']}):",
        "",
    ]
    lines += [
        f"| test split ({t['task'][0]['n']} examples) | exact match (95% CI) | prompt tokens / request | latency / "
        "request |",
        "|---|---|---|---|",
    ]
    best = max(r["score"] for r in t["task"])
    for r in t["task"]:
        score = _pct(r["score"])
        score = f"**{score}**" if r["score"] == best else score
        lines.append(
            f"| {_variant_label(r['label'])} | {score} ({r['lo'] * 100:.1f}–{r['hi'] * 100:.1f}) "
            f"| {r['prompt_tokens']:.0f} | {r['latency_ms']:.0f} ms |"
        )
    f0 = t["forgetting"][0]
    lines += [
        "",
        f"| forgetting probe | general QA ({f0['qa_items']} questions) | change, points (95% CI) | verdict "
        "| drift: NLL on base replies |",
        "|---|---|---|---|---|",
        f"| base model | {_pct(f0['qa_base'])} | | | {f0['drift_base']:.3f} |",
    ]
    for r in t["forgetting"]:
        lines.append(
            f"| {_variant_label(r['label'])} | {_pct(r['qa_tuned'])} | {_pts(r['qa_change'])} "
            f"({_pts(r['qa_change_lo'])} to {_pts(r['qa_change_hi'])}) | {r['verdict']} "
            f"| {r['drift_tuned']:.3f} ({_signed(r['drift_increase'])}) |"
        )
    b1, b2 = f0["floor_batch_sizes"]
    lines += [
        "",
        f"Noise floor (base vs base, batch {b1} vs {b2}): {f0['floor_qa_flipped']} of {f0['qa_items']} questions "
        f"answered differently ({f0['floor_qa'] * 100:.1f} points); drift {f0['floor_drift']:.4f} nats/token.",
    ]
    lines += ["", f"Recommendation (from the report): {t['recommendation']['text']}", ""]
    lines += [
        "| machine | runs | `make demo` minutes | LoRA exact match | with replay | general QA kept with replay |",
        "|---|---|---|---|---|---|",
    ]
    for tag, runs in machines.items():

        def score(r: dict, label: str) -> float:
            return next(x["score"] for x in r["tables"]["task"] if x["label"] == label)

        kept = [next(x["qa_tuned"] for x in r["tables"]["forgetting"] if x["variant"] == "lora-replay") for r in runs]
        lines.append(
            f"| {tag} | {len(runs)} | {_span([r['total_minutes'] for r in runs], '{:.1f}')} "
            f"| {_span([score(r, 'tuned: lora') for r in runs], _PCT)} "
            f"| {_span([score(r, 'tuned: lora-replay') for r in runs], _PCT)} | {_span(kept, _PCT)} |"
        )
    for tag, runs in machines.items():
        phases: dict[str, list[float]] = {}
        for r in runs:
            per_run: dict[str, float] = {}
            for p in r["phases"]:  # a phase can recur in a run (a cached step, the second time)
                per_run[p["phase"]] = per_run.get(p["phase"], 0.0) + p["seconds"]
            for name, seconds in per_run.items():
                phases.setdefault(name, []).append(seconds)
        lines += [
            "",
            f"Where the time goes on {tag} (median seconds per phase): "
            + "; ".join(f"{name} {statistics.median(s):.0f}" for name, s in phases.items())
            + ".",
        ]
    return "\n".join(lines) + "\n"


def render_quickstart_gemma() -> str:
    """The same quickstart on Gemma 3 270M (`--model gemma3-270m`), beside SmolLM2's."""
    machines = quickstart_runs("gemma3-270m")
    tag, runs = next(iter(machines.items()))
    run = runs[-1]
    t = run["tables"]
    lines = [
        f"`tunesmith quickstart --model gemma3-270m` (Gemma 3 270M, a base model without a chat template: "
        f"tunesmith's default template; latest run on {tag}, {describe(run['provenance']['machine'])}, "
        f"commit {_commit(run['provenance']['commit'])}, {run['total_minutes']:.1f} minutes):",
        "",
        f"| test split ({t['task'][0]['n']} examples) | exact match (95% CI) | general QA: base → tuned, verdict |",
        "|---|---|---|",
    ]
    qa = {r["label"]: r for r in t["forgetting"]}
    for r in t["task"]:
        f = qa.get(r["label"])
        kept = f"{_pct(f['qa_base'])} → {_pct(f['qa_tuned'])}, {f['verdict']}" if f else ""
        lines.append(
            f"| {_variant_label(r['label'])} | {_pct(r['score'])} ({r['lo'] * 100:.1f}–{r['hi'] * 100:.1f}) | {kept} |"
        )
    lines += [
        "",
        "| machine | runs | minutes | zero-shot | LoRA exact match | with replay |",
        "|---|---|---|---|---|---|",
    ]
    for tag, runs in machines.items():

        def score(r: dict, label: str) -> float:
            return next(x["score"] for x in r["tables"]["task"] if x["label"] == label)

        lines.append(
            f"| {tag} | {len(runs)} | {_span([r['total_minutes'] for r in runs], '{:.1f}')} "
            f"| {_span([score(r, 'zero-shot') for r in runs], _PCT)} "
            f"| {_span([score(r, 'tuned: lora') for r in runs], _PCT)} "
            f"| {_span([score(r, 'tuned: lora-replay') for r in runs], _PCT)} |"
        )
    return "\n".join(lines) + "\n"


def record_quickstart(run_dir: Path) -> Path:
    """Append a finished quickstart run (its quickstart.json) to results/quickstart-<machine>.json."""
    source = run_dir / "quickstart.json"
    if not source.is_file():
        raise SystemExit(f"{source}: no quickstart.json (is {run_dir} a finished quickstart run?)")
    run = json.loads(source.read_text())
    for key in ("provenance", "tables", "phases", "total_minutes"):
        if key not in run:
            raise SystemExit(f"{source}: no '{key}' (written by an older tunesmith); run the quickstart again")
    commit = run["provenance"]["commit"]
    if not commit or commit.endswith("+dirty"):
        raise SystemExit(f"{source}: commit {commit!r}: record runs of committed code only")
    keep = {k: run[k] for k in ("provenance", "tables", "phases", "total_minutes", "model", "task")}
    tag, model = run["provenance"]["machine_tag"], run["model"]
    path = RESULTS / (f"quickstart-{tag}.json" if model == DEFAULT_MODEL else f"quickstart-{model}-{tag}.json")
    data = json.loads(path.read_text()) if path.is_file() else {"machine_tag": tag, "model": model, "runs": []}
    data["runs"].append(keep)
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


# --- adapters (bench/adapters.py) ----------------------------------------------------------------


def _adapter_label(row: dict) -> str:
    a = row["adapter"]
    label = {
        "full": "full fine-tuning",
        "lora": "LoRA r={r}",
        "dora": "DoRA r={r}",
        "qlora-nf4": "QLoRA 4-bit NF4",
        "qlora-8bit": "QLoRA 8-bit",
        "ia3": "IA3",
        "prefix": "prefix ({virtual_tokens} tokens)",
        "prompt": "prompt ({virtual_tokens} tokens)",
    }[row["type"]].format(**a)
    if not row["gradient_checkpointing"]:
        label = label[:-1] + ", no checkpointing)" if label.endswith(")") else label + " (no checkpointing)"
    return label


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def render_adapters() -> str:
    data = json.loads((ROOT / "bench" / "results" / "adapters-avx512-bf16.json").read_text())
    rows = data["rows"]
    lora = next(r for r in rows if r["type"] == "lora")
    lines = ["| type | trainable parameters | peak RSS | vs LoRA | tokens/s | vs LoRA |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {_adapter_label(r)} | {_count(r['trainable_parameters'])} | {r['peak_rss_mib']:.0f} MiB "
            f"| {r['peak_rss_mib'] / lora['peak_rss_mib']:.2f}× | {r['tokens_per_s']:.0f} "
            f"| {r['tokens_per_s'] / lora['tokens_per_s']:.2f}× |"
        )
    return "\n".join(lines) + "\n"


# --- against TRL (bench/speed.py) -----------------------------------------------------------------


def render_bench() -> str:
    sys.path.insert(0, str(ROOT / "bench"))
    import speed  # bench/speed.py: its targets, applied to the file's runs
    import tables  # bench/tables.py: the same tables bench/speed.py prints

    data = json.loads((ROOT / "bench" / "results" / "speed-avx512-bf16.json").read_text())
    data.update(speed.summarise(data))
    peak = data["matmul_peak_gflops"][data["precision"]]
    head = (
        f"Measured on {describe(data['machine'])}, commit {_commit(data['commit'])}, tunesmith "
        f"{data['versions']['tunesmith']}, "
        f"TRL {data['trl_versions']['trl']}, transformers {data['trl_versions']['transformers']} (TRL's) / "
        f"{data['versions']['transformers']}, PEFT {data['versions']['peft']}, torch {data['versions']['torch']}; "
        f"{data['examples']} examples ({data['real_tokens']:,} real tokens), {data['repeats']} runs of each "
        "configuration "
        f"(seeds 0–{data['repeats'] - 1}, interleaved); median (range). MFU against the {data['precision']} matmul "
        f"peak measured in the same run, {peak:.0f} GFLOP/s."
    )
    return "\n\n".join([head, tables.configs(data), tables.targets(data)]) + "\n"


# --- examples (examples/*/run.sh write results/<example>-<machine>.json) ----------------------


def _example(name: str) -> dict:
    return json.loads((RESULTS / f"{name}-avx512-bf16.json").read_text())


def _ci(s: dict) -> str:
    return f"{_pct(s['mean'])} ({s['lo'] * 100:.1f}–{s['hi'] * 100:.1f})"


def render_distill() -> str:
    data = _example("distill")
    t, where = data["table"], data["provenance"]
    teacher, students = t["teacher"], t["students"]
    best = max(r["exact_match"]["mean"] for r in students.values())
    steps = next(iter(students.values()))["steps"]
    lines = [
        f"Measured on {describe(where['machine'])}, commit {_commit(where['commit'])}, "
        f"{data['total_minutes']:.1f} minutes in all (teacher {teacher['steps']} LoRA steps; every student "
        f"{steps} full updates):",
        "",
        f"| {teacher['exact_match']['n']} test examples | exact match (95% CI) | minus SFT, paired (95% CI) "
        f"| general QA ({teacher['general_qa']['n']} questions) | training minutes |",
        "|---|---|---|---|---|",
        f"| teacher, task-tuned bundled model ({teacher['parameters'] / 1e6:.1f}M) | {_ci(teacher['exact_match'])} "
        f"| | {_pct(teacher['general_qa']['mean'])} | |",
    ]
    for r in students.values():
        em = _ci(r["exact_match"])
        em = f"**{em}**" if r["exact_match"]["mean"] == best else em
        gap = r.get("minus_sft")
        gap = f"{_pts(gap['mean'])} ({_pts(gap['lo'])} to {_pts(gap['hi'])})" if gap else ""
        label = r["label"] + (f", after {r['warm_start']['steps']} SFT steps" if r.get("warm_start") else "")
        lines.append(
            f"| student: {label} | {em} | {gap} | {_pct(r['general_qa']['mean'])} | {r['train_minutes']:.1f} |"
        )
    lines += [
        "",
        f"Every student has {t['student_parameters'] / 1e6:.1f}M parameters and generates "
        f"{t['student_tokens_per_s']:.1f} tokens/s here, {t['speed_ratio']:.2f}× the teacher's "
        f"{teacher['tokens_per_s']:.1f}.",
    ]
    endpoint = next((r["endpoint"] for r in students.values() if "endpoint" in r), None)
    if endpoint:
        cost = (
            f", ${endpoint['cost']:.4f} at ${endpoint['price_per_1k_tokens']:g} per 1,000" if "cost" in endpoint else ""
        )
        lines.append(
            f"The endpoint teacher scored {endpoint['sequences_scored']:,} sampled sequences, "
            f"{endpoint['tokens_scored']:,} tokens{cost}."
        )
    logged = next((r for r in students.values() if "token_log" in r and "endpoint" not in r), None)
    if logged:
        log = logged["token_log"]
        first, last = log[min(log, key=int)], log[max(log, key=int)]
        by_position = last["loss_by_position"]
        worst = sorted(sorted(range(len(by_position)), key=lambda i: -(by_position[i] or 0))[:2])
        lines.append(
            f"Its per-token log (`samples.jsonl`): the divergence per sampled token falls from "
            f"{first['mean_loss']:.2f} (step {min(log, key=int)}) to {last['mean_loss']:.2f} (step "
            f"{max(log, key=int)}), and the share of sampled tokens the teacher gives under 10% from "
            f"{_pct(first['teacher_below_10pct'])} to {_pct(last['teacher_below_10pct'])}; what is left sits "
            f"at reply tokens {' and '.join(str(i + 1) for i in worst)} "
            f"({', '.join(f'{by_position[i]:.2f}' for i in worst)})."
        )
    goals = t.get("goals", {})
    if goals:
        lines.append(
            "Goals: "
            + "; ".join(f"on-policy {g['goal']}: {'met' if g['met'] else 'not met'}" for g in goals.values())
            + "."
        )
    if t.get("forgetting"):
        lines += [
            "",
            "Against forgetting, the quickstart's LoRA (the bundled model on the same task):",
            "",
            "| variant | task exact match (95% CI) | general QA: base → tuned, change (95% CI) | verdict "
            "| training minutes |",
            "|---|---|---|---|---|",
        ]
        for r in t["forgetting"].values():
            c = r["qa_change"]
            lines.append(
                f"| {r['label']} | {_ci(r['exact_match'])} | {_pct(r['qa_base']['mean'])} → "
                f"{_pct(r['qa_tuned']['mean'])}, {_pts(c['mean'])} ({_pts(c['lo'])} to {_pts(c['hi'])}) "
                f"| {r.get('verdict') or '–'} | {r['train_minutes']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def render_rlhf() -> str:
    data = _example("rlhf")
    t, where = data["table"], data["provenance"]
    labels = {
        "sft": "SFT, {steps} LoRA steps",
        "reward": "reward model, {steps} steps",  # GRPO's reward: the weighted sum
        "grpo": "GRPO, {steps} steps, exact match + 0.5 × reward model",
        "dpo": "DPO + chosen NLL (RPO), {steps} steps",
    }
    qa_items = next(r["general_qa"]["items"] for r in t.values() if "general_qa" in r)
    lines = [
        f"Measured on {describe(where['machine'])}, commit {_commit(where['commit'])}, {data['total_minutes']:.1f} "
        "minutes "
        f"in all:",
        "",
        f"| stage | exact match (test, 95% CI) | preference accuracy (val) | mean reward (val) "
        f"| general QA ({qa_items} questions): start → tuned, verdict |",
        "|---|---|---|---|---|",
    ]
    for name, row in t.items():
        em = _ci(row["exact_match"]) if "exact_match" in row else ""
        acc = _pct(row["preference_accuracy"]) if "preference_accuracy" in row else ""
        reward = f"{row['mean_reward']:.3f}" if "mean_reward" in row else ""
        g = row.get("general_qa")
        qa = f"{_pct(g['base'])} → {_pct(g['tuned'])}, {g['verdict']}" if g else ""
        lines.append(f"| {labels[name].format(steps=row['steps'])} | {em} | {acc} | {reward} | {qa} |")
    return "\n".join(lines) + "\n"


def render_tools() -> str:
    data = _example("tools")
    t, where = data["table"], data["provenance"]
    labels = {
        "zero-shot": "base model, tools in the prompt, zero-shot",
        "3-shot": "base model, tools in the prompt, 3-shot",
        "lora": f"LoRA, {t['steps']} steps",
        "lora-replay": f"LoRA, {t['steps']} steps, {_pct(t.get('replay', 0))} replay",
    }
    n = t["rows"]["lora"]["scores"]["tool_call_exact"]["n"]
    base_qa = next(iter(t["general_qa"].values()))
    lines = [
        f"Measured on {describe(where['machine'])}, commit {_commit(where['commit'])}, {data['total_minutes']:.1f} "
        "minutes "
        f"in all ({t['rows']['lora']['n']} test requests, {n} of them expecting calls; general QA: "
        f"{base_qa['qa_items']} questions):",
        "",
        "| model | calls exactly right (95% CI) | a call made | right functions | arguments valid for the schema "
        "| arguments right | no call where none was asked | general QA |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, row in t["rows"].items():
        s = row["scores"]

        def cell(name: str, s: dict = s) -> str:
            return _pct(s[name]["mean"]) if name in s else "–"

        q = t["general_qa"].get(key)
        qa = f"{_pct(q['qa_tuned'])} ({_pts(q['qa_change'])} points, {q['verdict']})" if q else _pct(base_qa["qa_base"])
        lines.append(
            f"| {labels[key]} | {_ci(s['tool_call_exact'])} | {cell('tool_call_rate')} | {cell('tool_name_accuracy')} "
            f"| {cell('tool_args_schema_valid')} | {cell('tool_argument_accuracy')} | {cell('tool_abstention')} | "
            f"{qa} |"
        )
    gap = t["lora_minus_zero_shot"]
    lines += [
        "",
        f"LoRA minus zero-shot, paired over the same requests: {_pts(gap['mean'])} points "
        f"(95% CI {_pts(gap['lo'])} to {_pts(gap['hi'])}).",
    ]
    return "\n".join(lines) + "\n"


def render_openai_migration() -> str:
    data = _example("openai-migration")
    t, where = data["table"], data["provenance"]
    hp = t["hyperparameters"]
    labels = {
        "zero-shot": "base model, zero-shot",
        "3-shot": "base model, 3 examples in the prompt",
        "fine-tuned": f"the fine-tune (`auto`: {hp['n_epochs']} epochs, batch {hp['batch_size']}, "
        f"learning rate × {hp['learning_rate_multiplier']:g}; {t['steps']} steps)",
    }
    lines = [
        f"Measured on {describe(where['machine'])}, commit {_commit(where['commit'])}: the job took "
        f"{t['job_minutes']:.1f} minutes ({t['train_examples']} training examples), the whole example "
        f"{data['total_minutes']:.1f}; {t['test_examples']} test requests through the same API:",
        "",
        "| model | exact match (95% CI) |",
        "|---|---|",
    ]
    lines += [f"| {labels[k]} | {_ci(s)} |" for k, s in t["rows"].items()]
    gap = t["tuned_minus_3_shot"]
    lines += [
        "",
        f"Fine-tune minus 3-shot prompting, paired over the same requests: {_pts(gap['mean'])} points "
        f"(95% CI {_pts(gap['lo'])} to {_pts(gap['hi'])})."
        + (
            f" General QA ({t['general_qa'].get('questions', 'the job’s forgetting probe,')} questions): "
            f"{_pct(t['general_qa']['base'])} → {_pct(t['general_qa']['tuned'])}."
            if t.get("general_qa")
            else ""
        ),
    ]
    return "\n".join(lines) + "\n"


def render_tinker_cookbook() -> str:
    data = _example("tinker-cookbook")
    t, where = data["table"], data["provenance"]
    sl, warm, rl = t["sl_loop"], t["warmup"], t["rl_loop"]
    before, after = rl["reward_before"], rl["reward_after"]
    lines = [
        f"Measured on {describe(where['machine'])}, commit {_commit(where['commit'])}; the whole example "
        f"{data['total_minutes']:.1f} minutes:",
        "",
        "| recipe (unmodified) | what it ran | before | after |",
        "|---|---|---:|---:|",
        f"| `sl_loop` on `example_data/conversations.jsonl` | {sl['steps']} steps of {sl['sequences_per_step']} "
        f"conversations, {sl['seconds_per_step']:.1f} s a step | mean NLL {sl['nll_base']:.3f} (base) | "
        f"{sl['nll_tuned']:.3f} |",
        f"| `rl_loop` on the date task (after {warm['steps']} `sl_loop` steps on dates in its answer format) | "
        f"{rl['steps']} steps of {rl['config']['batch_size']} questions × {rl['config']['group_size']} samples, "
        f"{rl['seconds_per_step']:.0f} s a step | reward {before['sampled']:.3f} sampled, {before['greedy']:.3f} "
        "greedy | "
        f"{after['sampled']:.3f}, {after['greedy']:.3f} |",
        "",
        f"Before/after through the same API: NLL of the {sl['conversations']} conversations' assistant tokens; "
        f"the recipe's own reward on {rl['questions']} date questions it never trained on (sampled: temperature 1, "
        "8 per question). Reward per step while training: "
        f"{', '.join(f'{r:.2f}' for r in rl['sampled_reward_per_step'])}.",
    ]
    return "\n".join(lines) + "\n"


# --- the README ------------------------------------------------------------------------------

# --- forgetting in weight space (examples/weight_space) ---------------------------------------


def _qa(q: dict | None) -> str:
    return "–" if q is None else _ci(q)


def render_weight_space() -> str:
    data = _example("weight-space")
    t, where = data["table"], data["provenance"]
    inter, merges, rebase = t["interpolation"], t["merges"], t["rebase"]
    base_qa = next(r["qa_base"] for r in inter["rows"] if r["qa_base"] is not None)
    lines = [
        f"Measured on {describe(where['machine'])}, commit {_commit(where['commit'])}, {data['total_minutes']:.1f} "
        "minutes for the whole example (`examples/weight_space/run.sh`). Task: the quickstart's dates, exact match on "
        "100 test examples; general QA on 100 questions (95% CIs).",
        "",
        "**Interpolation** (`forgetting.interpolate`: the LoRA moved α of the way from the base), next to replay:",
        "",
        "| model | task exact match | general QA |",
        "|---|---|---|",
    ]
    for r in inter["rows"]:
        qa = r["general_qa"] if r["kind"] == "tuned" else {"mean": base_qa, "lo": None, "hi": None}
        qa_text = _pct(qa["mean"]) + " (the base model)" if r["kind"] != "tuned" else _qa(qa)
        lines.append(f"| {r['label']} | {_ci(r['task'])} | {qa_text} |")
    lines += (
        [""]
        + [f"{n}" for n in inter["notes"]]
        + [
            "",
            f"Recommendation: {inter['recommendation']}",
            "",
            "**Merging** the dates LoRA (40 steps) and the tool-calling LoRA (80 steps, `../tools`), weights 1 each "
            "(`tunesmith merge ... --method M`, density 0.5 for TIES):",
            "",
            "| model | dates: exact match | tool calls: exactly right | general QA |",
            "|---|---|---|---|",
        ]
    )
    for label, r in merges.items():
        lines.append(f"| {label} | {_ci(r['dates'])} | {_ci(r['tools'])} | {_ci(r['general_qa'])} |")
    merged = {k: v for k, v in merges.items() if k.startswith("merged")}
    best_tools = max(merged, key=lambda k: merged[k]["tools"]["mean"])
    best_dates = max(merged, key=lambda k: merged[k]["dates"]["mean"])
    both = [
        k
        for k, v in merged.items()
        if v["tools"]["mean"] >= merges["tools LoRA"]["tools"]["mean"] - 0.05
        and v["dates"]["mean"] >= merges["dates LoRA"]["dates"]["mean"] - 0.05
    ]
    lead = (
        f"{', '.join(both)} keep{'s' if len(both) == 1 else ''} both skills within 5 points"
        if both
        else "No merge keeps both skills within 5 points"
    )
    lines += [
        "",
        f"{lead}: the best on tool calls ({best_tools}) makes {_pct(merged[best_tools]['tools']['mean'])} "
        f"of them against {_pct(merges['tools LoRA']['tools']['mean'])} for the tool adapter alone; the best on "
        f"dates ({best_dates}) keeps {_pct(merged[best_dates]['dates']['mean'])} against "
        f"{_pct(merges['dates LoRA']['dates']['mean'])}.",
    ]
    p = rebase["parity"]
    lines += [
        "",
        f"**Rebase** of the dates fine-tune onto {rebase['new_base']} (`tunesmith rebase`: the old model's "
        f"answers to the 1,200 training prompts, {rebase['steps']} steps of LoRA on the new base):",
        "",
        "| measure | old | new | new − old (paired 95% CI) |",
        "|---|---|---|---|",
    ]
    for key, title in (("task", "dates exact match"), ("general_qa", "general QA")):
        if key in p:
            d = p[key]["difference"]
            lines.append(
                f"| {title} | {_pct(p[key]['old']['mean'])} | {_pct(p[key]['new']['mean'])} | "
                f"{_pts(d['mean'])} points ({_pts(d['lo'])} to {_pts(d['hi'])}) |"
            )
    lines += [
        "",
        f"Verdict: {p['verdict']}. The new model gives the old one's reply to {rebase['same_replies']} of "
        f"{rebase['test_prompts']} test prompts, its mistakes included: it learned the old model. Before tuning, "
        f"{rebase['new_base']} answers {_pct(rebase['new_base_qa']['mean'])} of the general questions (chosen for "
        "the bundled model); trained only on date answers, the new model answers them with dates. Self-replay in "
        "the new run (`--set forgetting.replay=0.25`) is the lever for that; not measured here.",
    ]
    return "\n".join(lines) + "\n"


# --- scores during training (bench/watched.py) ------------------------------------------------


def bench_results(name: str):
    """(machine tag, results) of bench/results/<name>-<tag>.json for each machine kind measured."""
    for tag in MACHINE_ORDER:
        path = ROOT / "bench" / "results" / f"{name}-{tag}.json"
        if path.exists():
            yield tag, json.loads(path.read_text())


def render_watched() -> str:
    lines = []
    for tag, d in bench_results("watched"):
        m = d["median_train_seconds"]
        lines.append(
            f"- {tag}: {d['steps']} LoRA steps of the quickstart on the bundled model, {m['without']:.1f} s without, "
            f"{m['with']:.1f} s with `generate_every: {d['every']}` on {d['limit']} examples "
            f"({d['evaluations']} evaluations): {d['overhead']:+.0%} training time, "
            f"{d['seconds_per_evaluation']:.1f} s per evaluation (medians of {d['repeats']} runs each, "
            f"interleaved; {describe(d['machine'])}, commit {_commit(d['provenance']['commit'])})."
        )
    return "\n".join(lines) + "\n"


# --- reading a plain messages file (bench/read_records.py) ---------------------------------------


def render_read_records() -> str:
    lines = []
    for tag, d in bench_results("read-records"):
        m = d["median_seconds"]
        lines.append(
            f"- {tag}: {d['records']:,} records read and validated in {m['current']:.3f} s, "
            f"{m['baseline']:.3f} s with the reader of {d['baseline']}: {d['slowdown']:+.1%} (medians of "
            f"{d['repeats']} runs each, interleaved, each in a fresh interpreter; {describe(d['machine'])}, "
            f"commit {_commit(d['provenance']['commit'])})."
        )
    return "\n".join(lines) + "\n"


# --- serving many clients (bench/serve.py) --------------------------------------------------------


def render_serve() -> str:
    lines = []
    for tag, d in bench_results("serve"):
        m, st, goals = d["medians"], d["settings"], d["goals"]
        lines.append(
            f"{tag}: {describe(d['machine'])}; commit {_commit(d['provenance']['commit'])}, {d['llama_cpp']}; "
            f"{st['reply_tokens']}-token greedy replies streamed, {st['per_client']} requests per client, medians "
            f"of {st['repeats']} interleaved runs.\n"
        )
        for case, title in (
            ("one", "one model"),
            ("mixed", f"requests spread over the base and {st['adapters']} LoRA adapters"),
        ):
            lines.append(
                f"| {title}: clients | tunesmith req/s | tok/s | latency p50 / p95 s | first token p50 s "
                "| RSS MB | llama.cpp req/s | tok/s | latency p50 / p95 s | first token p50 s | RSS MB |"
            )
            lines.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for c in st["levels"]:
                cells = []
                for server in ("tunesmith", "llama.cpp"):
                    r = m[server][case][str(c)]
                    cells += [
                        f"{r['requests_per_s']:.2f}",
                        f"{r['tokens_per_s']:.0f}",
                        f"{r['latency_p50']:.1f} / {r['latency_p95']:.1f}",
                        f"{r['ttft_p50']:.2f}",
                        f"{r['peak_rss_mb']:.0f}",
                    ]
                lines.append(f"| {c} | " + " | ".join(cells) + " |")
            lines.append("")
        ratios = ", ".join(f"{c} clients {x:.2f}×" for c, x in goals["mixed_vs_llama_cpp"].items())
        said = []
        if goals["throughput_8_vs_1"] is not None:
            said.append(
                f"at 8 clients tunesmith answers {goals['throughput_8_vs_1']:.1f}× the requests per second it "
                f"answers one at a time (goal ≥ 5×); its p95 latency at 8 clients is "
                f"{goals['p95_8_vs_single']:.1f}× a single request's (goal ≤ 2×)"
            )
        said.append(f"mixed adapters, tunesmith's tokens/s over llama.cpp's: {ratios} (goal ≥ 1×)")
        sentence = "; ".join(said)
        lines.append(sentence[0].upper() + sentence[1:] + ".\n")
    return "\n".join(lines) if lines else "(not measured yet)\n"


# --- sampling while training (bench/sampling.py) -------------------------------------------------


def _lengths(lengths: list[int]) -> str:
    return f"{lengths[0]}" if len(lengths) == 1 else f"{min(lengths)}–{max(lengths)}"


def render_sampling() -> str:
    lines = []
    for tag, d in bench_results("sampling"):
        draw, decode, rows, new = d["draw"], d["decode"], d["rows"], d["new_tokens"]
        lines.append(
            f"{tag}: {describe(d['machine'])}; commit {_commit(d['provenance']['commit'])}; each pair or triple "
            f"timed alternately in one process, medians of {d['repeats']} (decode attention: of "
            f"{d['attention_repeats']}).\n"
        )
        lines.append("| | before | tunesmith | ratio |")
        lines.append("|---|---|---|---|")
        lines.append(
            f"| one token drawn from a 49,152-token distribution (µs per row) | `torch.multinomial` "
            f"{draw['multinomial_us']:.0f} | {draw['inverse_transform_us']:.0f} | {draw['ratio']:.1f}× |"
        )
        lines.append(
            f"| {rows} replies × {new} tokens, LoRA r16 on the bf16 base (s) | PEFT's LoRA forward "
            f"{decode['peft_s']:.2f} | fused {decode['fused_s']:.2f} | {decode['ratio']:.2f}× |"
        )
        lines.append("")
        lines.append(
            f"| decode attention, {rows} replies × {new} tokens: prompt tokens | every row's keys gathered (s) "
            f"| row by row (s) | switch at {d['per_row_from']} keys (s) | switch against gathered |"
        )
        lines.append("|---|---:|---:|---:|---:|")
        for case in d["decode_attention"].values():
            lines.append(
                f"| {_lengths(case['prompt_lengths'])} | {case['gathered_s']:.2f} | {case['row_by_row_s']:.2f} "
                f"| {case['switch_s']:.2f} | {case['switch_vs_gathered']:.2f}× |"
            )
        lines.append("")
    return "\n".join(lines) if lines else "(not measured yet)\n"


# --- one Tinker API step against the engine's (bench/tinker_step.py) ----------------------------------


def render_tinker_step() -> str:
    lines = []
    for tag, d in bench_results("tinker-step"):
        st, m = d["settings"], d["medians"]
        lines.append(
            f"{tag}: {describe(d['machine'])}; commit {_commit(d['provenance']['commit'])}, {st['client']}; "
            f"{st['model']}, LoRA rank {st['rank']}, a batch of {st['batch']} conversations ({st['tokens']} "
            f"tokens), medians of {st['repeats']} alternating steps.\n"
        )
        lines.append("| one step (forward_backward + optim_step) | seconds |")
        lines.append("|---|---:|")
        spread = {k: (min(r[k] for r in d["runs"]), max(r[k] for r in d["runs"])) for k in ("tinker_s", "engine_s")}
        lines.append(
            f"| through the Tinker API (`tinker` client, HTTP, live service) | {m['tinker_s']:.3f} "
            f"({spread['tinker_s'][0]:.3f}–{spread['tinker_s'][1]:.3f}) |"
        )
        lines.append(
            f"| in the engine (the same calls in-process: `tunesmith train`'s step functions) | {m['engine_s']:.3f} "
            f"({spread['engine_s'][0]:.3f}–{spread['engine_s'][1]:.3f}) |"
        )
        lines.append(f"| the API's overhead (difference of the medians) | {m['overhead_s']:+.3f} ({m['ratio']:.2f}×) |")
        lines.append("")
    return "\n".join(lines) if lines else "(not measured yet)\n"


RENDERERS = {
    "serve": render_serve,
    "sampling": render_sampling,
    "tinker-step": render_tinker_step,
    "read-records": render_read_records,
    "quickstart": render_quickstart,
    "quickstart-gemma": render_quickstart_gemma,
    "adapters": render_adapters,
    "bench": render_bench,
    "distill": render_distill,
    "rlhf": render_rlhf,
    "tools": render_tools,
    "openai-migration": render_openai_migration,
    "watched": render_watched,
    "tinker-cookbook": render_tinker_cookbook,
    "weight-space": render_weight_space,
}


def regenerate(text: str) -> str:
    def block(m: re.Match) -> str:
        name = m["name"]
        if name not in RENDERERS:
            raise SystemExit(f"generated block {name!r} has no renderer in tools/readme_tables.py")
        return m.group(1) + RENDERERS[name]() + m.group(5)

    return BLOCK.sub(block, text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", nargs="?", choices=["render", "record"], default="render")
    ap.add_argument("run_dir", nargs="?", type=Path)
    ap.add_argument("--check", action="store_true", help="exit 1 if a page differs from what the results give")
    args = ap.parse_args(argv)
    if args.command == "record":
        if args.run_dir is None:
            ap.error("record needs the quickstart's run directory (e.g. quickstart/runs/dates)")
        print(f"recorded in {record_quickstart(args.run_dir)}")
        return 0
    status = 0
    for path in documents():
        text = path.read_text()
        new = regenerate(text)
        if not args.check:
            path.write_text(new)
        elif new != text:
            changed = [m["name"] for m, n in zip(BLOCK.finditer(text), BLOCK.finditer(new)) if m.group(0) != n.group(0)]
            print(
                f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: generated blocks differ from the "
                f"results files: {', '.join(changed)}; run make results-table",
                file=sys.stderr,
            )
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
