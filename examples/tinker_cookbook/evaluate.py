"""Before/after measurements of the cookbook recipes' runs, through the same Tinker API.

    python evaluate.py BASE_URL WORKDIR  (in the cookbook's environment; writes WORKDIR/evaluation.json)

- sl_loop: mean negative log-likelihood per assistant token of all 128 example conversations,
  under the base model and under the run's final sampler (the tokens and weights the recipe
  trained on: the cookbook's own renderer and `conversation_to_datum`).
- rl_loop: reward (the recipe's own `get_reward`) on 64 date questions it never trained on, greedy
  and sampled as the recipe samples (temperature 1, 8 per question, fixed seeds), before RL (the
  warm-up's final sampler) and after (the RL run's final sampler).
"""

import json
import sys
from pathlib import Path

import tinker
from tinker_cookbook import renderers
from tinker_cookbook.recipes.rl_loop import get_reward
from tinker_cookbook.supervised.data import conversation_to_datum
from tinker_cookbook.tokenizer_utils import get_tokenizer

MODEL = "Qwen/Qwen3-4B-Instruct-2507"
SUFFIX = " Provide a numerical answer without units, written inside \\boxed{}."
PREFIX = [  # rl_loop's own one-shot prefix
    {"role": "user", "content": "How many r's are in strawberry?" + SUFFIX},
    {"role": "assistant", "content": "Let's spell the word out and number all the letters: 1) s 2) t 3) r 4) a 5) w "
                                     "6) b 7) e 8) r 9) r 10) y. We have r's at positions 3, 8, and 9. \\boxed{3}"},
]


def final_sampler(log_dir: Path) -> str:
    records = [json.loads(line) for line in (log_dir / "checkpoints.jsonl").read_text().splitlines()]
    return next(r["sampler_path"] for r in reversed(records) if "sampler_path" in r)


def mean_nll(client, renderer, conversations) -> float:
    total, weight = 0.0, 0.0
    futures = []
    for messages in conversations:
        datum = conversation_to_datum(messages, renderer, 32768, renderers.TrainOnWhat.ALL_ASSISTANT_MESSAGES)
        tokens = datum.model_input.to_ints() + [int(datum.loss_fn_inputs["target_tokens"].tolist()[-1])]
        futures.append((client.compute_logprobs(tinker.types.ModelInput.from_ints(tokens)), datum))
    for future, datum in futures:
        logprobs = future.result()[1:]  # the first token has none
        for lp, w in zip(logprobs, datum.loss_fn_inputs["weights"].tolist()):
            total, weight = total - lp * w, weight + w
    return total / weight


def mean_reward(client, renderer, rows, temperature: float, n: int) -> float:
    futures = []
    for i, row in enumerate(rows):
        params = tinker.types.SamplingParams(max_tokens=24, temperature=temperature, seed=i,
                                             stop=renderer.get_stop_sequences())
        prompt = renderer.build_generation_prompt([*PREFIX, {"role": "user", "content": row["question"] + SUFFIX}])
        futures.append(client.sample(prompt=prompt, num_samples=n, sampling_params=params))
    rewards = []
    for future, row in zip(futures, rows):
        for sequence in future.result().sequences:
            message, _ = renderer.parse_response(sequence.tokens)
            rewards.append(get_reward(renderers.get_text_content(message), row["answer"]))
    return sum(rewards) / len(rewards)


def rewards(client, renderer, rows) -> dict:
    return {"greedy": mean_reward(client, renderer, rows, 0.0, 1),
            "sampled": mean_reward(client, renderer, rows, 1.0, 8)}


def main() -> None:
    base_url, work = sys.argv[1], Path(sys.argv[2])
    tokenizer = get_tokenizer(str(work / "recipes" / MODEL))
    renderer = renderers.get_renderer("qwen3_instruct", tokenizer)
    service = tinker.ServiceClient(base_url=base_url)
    conversations = [json.loads(line)["messages"] for line in
                     (work / "recipes" / "HuggingFaceH4" / "no_robots" / "train.jsonl").read_text().splitlines()]
    gsm8k = work / "recipes" / "openai" / "gsm8k" / "main" / "train.jsonl"
    rows = [json.loads(line) for line in gsm8k.read_text().splitlines()][-64:]  # past every batch rl_loop trained on

    def sampler(run: str):
        return service.create_sampling_client(model_path=final_sampler(work / run)).result()

    base = service.create_sampling_client(base_model=MODEL).result()
    out = {
        "sl_loop": {"conversations": len(conversations),
                    "nll_base": mean_nll(base, renderer, conversations),
                    "nll_tuned": mean_nll(sampler("sl"), renderer, conversations)},
        "rl_loop": {"questions": len(rows),
                    "reward_before": rewards(sampler("sl-warmup"), renderer, rows),
                    "reward_after": rewards(sampler("rl"), renderer, rows)},
    }
    (work / "evaluation.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
