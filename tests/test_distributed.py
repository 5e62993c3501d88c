"""Data-parallel training under torchrun (gloo, 2 processes, tiny model, fp32): the same loss
trajectory as one process with the same global batch and seed, for every method; a checkpoint
written by 2 processes resumes in 1; passes line up across ranks."""

import shutil

import pytest
import torch
import yaml
from helpers import cli, read_jsonl, write_config

from tunesmith.config import load_config
from tunesmith.engine.distributed import Ranks, share
from tunesmith.engine.passes import rank_passes
from tunesmith.run import train


def test_every_rank_runs_as_many_passes_as_the_busiest():
    lengths = [900, 100, 900, 100, 900, 50]
    batch = [0, 1, 2, 3, 4, 5]
    # rank 0 gets 0, 2, 4 (three passes under a 1024-token budget), rank 1 gets 1, 3, 5 (one)
    r0 = rank_passes(batch, lengths, 1024, Ranks(0, 2))
    r1 = rank_passes(batch, lengths, 1024, Ranks(1, 2))
    assert r0 == [([0], False), ([2], False), ([4], False)]
    assert r1 == [([1, 3, 5], False), ([1, 3, 5], True), ([1, 3, 5], True)]
    assert sorted(i for part, ghost in r0 + r1 if not ghost for i in part) == batch  # every example once
    lone = rank_passes([7], [10] * 8, None, Ranks(1, 2))  # nothing for rank 1: one ghost pass
    assert lone == [([7], True)]
    assert share(list(range(5)), Ranks(1, 2)) == [1, 3]


def _run(tmp_path, cfg, nproc, *extra):
    """`tunesmith train` on `nproc` processes; the single-process reference runs in this process
    (the same code, without another interpreter starting)."""
    if nproc == 1:
        assert extra in ((), ("--resume",))
        train(load_config(cfg), resume=bool(extra), quiet=True)
        return None
    result = cli(["train", str(cfg), "--quiet", "--nproc", str(nproc), *extra], tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{nproc} processes" in result.stderr
    assert result.stdout.count('"run_dir"') == 1  # one summary: rank 0's
    return result


def _losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_jsonl(run_dir / "metrics.jsonl")]


def _same_trajectory(a, b, tol=1e-4):
    assert [s for s, _ in a] == [s for s, _ in b]
    for (step, x), (_, y) in zip(a, b):
        assert abs(x - y) <= tol, (step, x, y)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    from tunesmith.tasks.dates import write_preference_splits

    return write_preference_splits(tmp_path_factory.mktemp("prefs"), n_train=32, n_val=8)


CASES = {  # name -> (method, data fixture, distributed, extra config sections); batch 6: 3 examples a rank
    "sft": ("sft", "date_data", "ddp", {}),
    "sft-packed": ("sft", "date_data", "ddp", {"data": {"packing": True, "max_length": 128}}),
    "dpo": ("dpo", "pairs", "ddp", {"preference": {"loss": "sigmoid", "beta": 0.1}}),
    "reward": ("reward", "pairs", "ddp", {}),
    "distill": ("distill", "date_data", "ddp", {"distill": {"teacher": "TEACHER", "loss": "forward_kl"}}),
    "fsdp-lora": ("sft", "date_data", "fsdp", {}),
    "fsdp-full": ("sft", "date_data", "fsdp", {"adapter": {"type": "none"}}),
    "fsdp-dpo": ("dpo", "pairs", "fsdp", {"preference": {"loss": "sigmoid", "beta": 0.1}}),
}


def case_config(path, name, data, out_dir, tiny_model_dir):
    method, _, mode, sections = CASES[name]
    sections = yaml.safe_load(yaml.safe_dump(sections).replace("TEACHER", str(tiny_model_dir)))
    data_section = {
        "train": [{"path": str(data["train"])}],
        "val": str(data["val"]),
        "max_length": 256,
        **sections.pop("data", {}),
    }
    return write_config(
        path,
        tiny_model_dir,
        data,
        out_dir,
        name=name,
        method=method,
        data=data_section,
        train={"max_steps": 6, "batch_size": 6, "lr": 5e-3, "log_every": 1, "seed": 1, "distributed": mode},
        eval={"every": 3},
        **sections,
    )


def checkpoint_config(path, name, mode, date_data, out_dir, tiny_model_dir, **output):
    """Every weight trained (under FSDP every weight sharded); with `output`, checkpoints as it goes."""
    train = {"max_steps": 6, "batch_size": 6, "lr": 5e-3, "log_every": 1, "seed": 2, "distributed": mode}
    return write_config(
        path, tiny_model_dir, date_data, out_dir, name=name, train=train, adapter={"type": "none"}, output=output
    )


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory, tiny_model_dir, date_data, pairs):
    """Every case, and a run of each mode that checkpoints at steps 3 and 6, on 2 processes in one
    torchrun launch (tests/distributed_runs.py): a launch of its own each would start ten times as
    many interpreters (the tests after these launch `tunesmith train --nproc 2` itself). Run name ->
    (its config, its run directory, what its run wrote to stderr); a test may change its own run's files."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from helpers import cli_env

    tmp = tmp_path_factory.mktemp("two-processes")
    data = {"date_data": date_data, "pairs": pairs}
    configs = {n: case_config(tmp / f"{n}.yaml", n, data[CASES[n][1]], tmp / "runs", tiny_model_dir) for n in CASES}
    for mode in ("ddp", "fsdp"):
        configs[f"checkpoints-{mode}"] = checkpoint_config(
            tmp / f"checkpoints-{mode}.yaml",
            f"checkpoints-{mode}",
            mode,
            date_data,
            tmp / "runs",
            tiny_model_dir,
            save_every=3,
            keep=5,
        )
    env = {**cli_env(tmp), "OMP_NUM_THREADS": str(max(1, int(os.environ.get("OMP_NUM_THREADS", "2")) // 2))}
    runner = Path(__file__).with_name("distributed_runs.py")
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(runner)]
    result = subprocess.run(
        [sys.executable, *launch, *map(str, configs.values())],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sections = result.stderr.split("== run ")[1:]
    assert [s.split("\n", 1)[0] for s in sections] == list(map(str, configs.values()))  # every run, in order
    return {n: (configs[n], tmp / "runs" / n, s) for n, s in zip(configs, sections)}


@pytest.mark.xdist_group("two_process_runs")  # one worker launches them all
@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_follow_the_single_process_loss(tmp_path, request, tiny_model_dir, two_process_runs, name):
    from safetensors.torch import load_file

    data = request.getfixturevalue(CASES[name][1])
    _run(tmp_path, case_config(tmp_path / "1.yaml", name, data, tmp_path / "runs", tiny_model_dir), 1)
    _, two, stderr = two_process_runs[name]
    runs = {1: tmp_path / "runs" / name, 2: two}
    assert ("2 decoder layers sharded over 2 processes" in stderr) == (CASES[name][2] == "fsdp")
    one, two = _losses(runs[1]), _losses(runs[2])
    assert len(one) == 6
    assert one[-1][1] != one[0][1]  # it trained
    _same_trajectory(one, two)
    val_one = [r["val_loss"] for r in read_jsonl(runs[1] / "metrics.jsonl") if "val_loss" in r]
    val_two = [r["val_loss"] for r in read_jsonl(runs[2] / "metrics.jsonl") if "val_loss" in r]
    assert len(val_one) == 2 and all(abs(a - b) <= 1e-4 for a, b in zip(val_one, val_two))
    # the saved model: the same weights (under FSDP gathered from the shards, then saved by rank 0)
    weights = (
        "model.safetensors" if CASES[name][3].get("adapter", {}).get("type") == "none" else "adapter_model.safetensors"
    )
    saved = [load_file(runs[n] / "final" / weights) for n in (1, 2)]
    assert saved[0].keys() == saved[1].keys()
    for key, value in saved[0].items():
        assert torch.allclose(value, saved[1][key], atol=1e-4), key
    assert (runs[2] / "summary.json").is_file()


def test_grpo_runs_on_two_processes(tmp_path, tiny_model_dir, date_data):
    """Sampling differs with the split (each rank draws its own replies), so the check is that it
    trains: every step logged once, rewards and KL measured, the model saved."""
    cfg = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        date_data,
        tmp_path / "runs",
        method="grpo",
        train={"max_steps": 3, "batch_size": 4, "lr": 1e-2, "log_every": 1},
        # replies of different lengths score differently: the advantages are not all zero, so it moves
        rl={"rewards": [{"function": "length_penalty", "target_length": 2}], "group_size": 2, "max_new_tokens": 6},
    )
    _run(tmp_path, cfg, 2)
    records = read_jsonl(tmp_path / "runs" / "tiny" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(r["reward"] <= 0 for r in records)
    # KL to the reference: none before the first update (policy = reference), some after two
    assert records[0]["kl"] == pytest.approx(0, abs=1e-6) and records[-1]["kl"] > 1e-6, [r["kl"] for r in records]
    assert (tmp_path / "runs" / "tiny" / "final" / "adapter_model.safetensors").is_file()


@pytest.mark.xdist_group("two_process_runs")
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_a_checkpoint_from_two_processes_resumes_in_one(tmp_path, tiny_model_dir, date_data, two_process_runs, mode):
    whole = checkpoint_config(tmp_path / "whole.yaml", "whole", mode, date_data, tmp_path / "runs", tiny_model_dir)
    _run(tmp_path, whole, 1)
    # two processes wrote checkpoints at steps 3 and 6; keep the run as it was at step 3, as if killed there
    config, killed, _ = two_process_runs[f"checkpoints-{mode}"]
    assert (killed / "checkpoints" / "step-3").is_dir()
    shutil.rmtree(killed / "final")
    for later in killed.iterdir():
        if later.name not in ("checkpoints", "metrics.jsonl", "config.yaml"):
            shutil.rmtree(later) if later.is_dir() else later.unlink()
    _run(tmp_path, config, 1, "--resume")
    _same_trajectory(_losses(tmp_path / "runs" / "whole"), _losses(killed))


def test_bad_data_stops_every_process_with_the_input_error(tmp_path, tiny_model_dir, date_data):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": 3}\n')
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, {"train": bad, "val": date_data["val"]}, tmp_path / "runs")
    result = cli(["train", str(cfg), "--nproc", "2"], tmp_path, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "bad.jsonl:2" in result.stderr
    assert not (tmp_path / "runs" / "tiny").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ({"method": "grpo", "rl": {"rewards": [{"function": "exact_match"}]}}, "method grpo generates replies"),
        ({"adapter": {"type": "qlora"}}, "a 4-bit base is not sharded"),
        ({"adapter": {"type": "prompt"}}, "prompt tuning's virtual tokens"),
        ({"forgetting": {"l2sp": 0.1}}, "forgetting.l2sp keeps a whole copy"),
    ],
)
def test_fsdp_refuses_what_it_cannot_shard(tmp_path, tiny_model_dir, date_data, override, message):
    from tunesmith.config import load_config
    from tunesmith.errors import UserError

    cfg = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        date_data,
        tmp_path / "runs",
        train={"max_steps": 2, "distributed": "fsdp"},
        **override,
    )
    with pytest.raises(UserError, match=f"train.distributed fsdp: {message}.*; use ddp"):
        load_config(cfg)


def test_two_torchrun_agents_meet_at_a_rendezvous_as_two_nodes_would(tmp_path, tiny_model_dir, date_data):
    """The multi-node command of the README, both "nodes" on this machine: two torchrun agents with
    one process each, meeting at a c10d rendezvous; the run equals the single-process one."""
    import socket
    import subprocess
    import sys

    from helpers import cli_env

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    steps = {"max_steps": 4, "batch_size": 6, "lr": 5e-3, "log_every": 1, "seed": 4}
    one = write_config(tmp_path / "one.yaml", tiny_model_dir, date_data, tmp_path / "runs", name="one", train=steps)
    _run(tmp_path, one, 1)
    nodes = write_config(
        tmp_path / "nodes.yaml", tiny_model_dir, date_data, tmp_path / "runs", name="nodes", train=steps
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--nproc-per-node",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        "--rdzv-id",
        "two-nodes",
        "-m",
        "tunesmith",
        "train",
        str(nodes),
        "--quiet",
    ]
    agents = [
        subprocess.Popen(
            command, cwd=tmp_path, env=cli_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [agent.communicate(timeout=300) for agent in agents]
    assert all(agent.returncode == 0 for agent in agents), [err[-2000:] for _, err in outputs]
    assert sum(out.count('"run_dir"') for out, _ in outputs) == 1  # rank 0's summary, on one of the nodes
    _same_trajectory(_losses(tmp_path / "runs" / "one"), _losses(tmp_path / "runs" / "nodes"))
