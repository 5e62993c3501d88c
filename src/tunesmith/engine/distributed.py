"""Data parallelism across processes started by torchrun: one run, the same result on any number.

Every rank draws the same global batches (the sampler is seeded) and takes its share of each:
examples (or packed rows) r, r + N, r + 2N, ... of the batch. The loss of every pass is divided
by the item count of the whole global batch, and the ranks' gradients are summed before the
optimizer step, so the step is the single-process step up to the order of float additions:
`train.batch_size` and `train.grad_accum` mean the same with 1 process or 8, and a checkpoint
(written by rank 0, the only rank that writes anything) resumes on any number of processes.

Collectives must line up, so every rank runs the same number of passes per step: a rank whose
share splits into fewer passes repeats its first with weight zero.

`ddp` replicates the model and sums gradients with one all-reduce per bucket after the step's
backward passes: DDP's algorithm, not its wrapper module, because methods run the model in
parts its forward hook would not see (the decoder, then the output head in chunks; generation).
`fsdp` shards the decoder with FSDP2 (`fully_shard` on every layer, then on the decoder): each
rank holds 1/N of those weights, their gradients and optimizer state, and gathers a layer's
weights only while it runs. What lies outside the decoder (an untied output head, a reward
model's score head) stays replicated and is summed like `ddp`. Checkpoints hold full tensors
(gathered on every rank, written by rank 0), so they load on any number of processes.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from typing_extensions import TypeIs

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor
    from torch.nn import Module

BUCKET_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world > 1


def current() -> Ranks:
    """This process's place: from the initialised process group, else one process alone."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def start() -> Ranks:
    """Join torchrun's process group when launched by it (WORLD_SIZE > 1): nccl on GPUs, gloo on CPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        # a process that leaves with an error must still take its group down while Python is alive
        # (gloo's threads would otherwise abort the process at exit, hiding its exit code)
        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    return current()


def stop() -> None:
    """Leave the process group once every rank is done with it."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def is_main() -> bool:
    return current().main


def barrier() -> None:
    if current().parallel:
        dist.barrier()


def share(batch: list[Any], ranks: Ranks) -> list[Any]:
    """This rank's part of a global batch."""
    return batch[ranks.rank :: ranks.world]


def sum_scalars(values: list[float], ranks: Ranks) -> list[float]:
    """Elementwise sums over ranks (fp64, so counts and loss sums stay exact enough to compare)."""
    if not ranks.parallel:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def sum_metrics(metrics: dict[str, float], ranks: Ranks) -> dict[str, float]:
    """Per-rank metric sums added over ranks; a metric only some ranks report counts as 0 elsewhere."""
    if not ranks.parallel:
        return metrics
    gathered: list[Any] = [None] * ranks.world
    dist.all_gather_object(gathered, sorted(metrics))
    names = sorted({n for names in gathered for n in names})
    return dict(zip(names, sum_scalars([float(metrics.get(n, 0.0)) for n in names], ranks)))


def sum_gradients(params: list[torch.Tensor], ranks: Ranks) -> None:
    """Every rank's gradients replaced by their sum over ranks, in buckets of flat tensors; sharded
    parameters' gradients are left alone (FSDP has summed them)."""
    if not ranks.parallel:
        return
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    params = [p for p in params if not is_sharded(p)]
    for p in params:  # a parameter no pass reached: zero here, so that every rank sends the same buckets
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    buckets: list[list[torch.Tensor]] = []
    bucket: list[torch.Tensor] = []
    size = 0
    for g in [p.grad for p in params if p.grad is not None]:
        nbytes = g.numel() * g.element_size()
        if bucket and (size + nbytes > BUCKET_BYTES or g.dtype != bucket[0].dtype or g.device != bucket[0].device):
            buckets.append(bucket)
            bucket, size = [], 0
        bucket.append(g)
        size += nbytes
    if bucket:
        buckets.append(bucket)
    for bucket in buckets:
        flat = _flatten_dense_tensors(bucket)
        dist.all_reduce(flat)
        for g, summed in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
            g.copy_(summed)


def launch_local(nproc: int, argv: list[str]) -> int:
    """Run `python -m tunesmith ARGV` in `nproc` processes on this machine, as
    `torchrun --standalone --nproc-per-node NPROC` would; returns the exit code of the first
    process that failed (2 for bad input, as a single process would), else 0."""
    import sys
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if not torch.cuda.is_available():  # CPU processes on one machine: a share of the cores each (torchrun sets 1)
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
    )
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "tunesmith", *argv)
    except ChildFailedError as e:  # each process has said what went wrong on its stderr
        # the one that failed first exited with its own code; the launcher then stopped the others with a signal
        codes = [f.exitcode for _, f in sorted(e.failures.items()) if f.exitcode and f.exitcode > 0]
        return codes[0] if codes else 1
    return 0


def is_sharded(t: object) -> TypeIs[DTensor]:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full(t: torch.Tensor) -> torch.Tensor:
    """A sharded tensor gathered whole (every rank must call this together); others as they are."""
    return t.full_tensor() if is_sharded(t) else t


def like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A whole tensor laid out as `param` is: this rank's shard of it where `param` is sharded."""
    if not is_sharded(param):
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(param.device_mesh.device_type), param.device_mesh, param.placements)


def shard_model(model: Module, dev: torch.device, precision: str) -> int:
    """FSDP2 over the ranks: every decoder layer, then the decoder (embeddings, final norm) as the
    root that methods call. Gradients are summed, not averaged, as in `ddp`. Returns the number
    of layers sharded."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from tunesmith.errors import UserError
    from tunesmith.model.peft_wrapping import unwrap

    base = unwrap(model)
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise UserError(f"train.distributed fsdp: {type(base).__name__} has no decoder layers to shard; use ddp")
    mesh = init_device_mesh(dev.type, (current().world,))
    policy = MixedPrecisionPolicy()
    if dev.type == "cuda" and precision == "bf16":  # gather and compute in bf16, reduce gradients in fp32
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    head, embeddings = base.get_output_embeddings(), base.get_input_embeddings()
    tied = head is not None and head.weight is embeddings.weight
    units = [*layers, decoder]
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    for unit in units:
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)  # a plain sum: gloo has no pre-multiplied one
    if tied:  # sharding replaced the embeddings' parameter; the head is outside the decoder: tie it again
        head.weight = embeddings.weight
    return len(layers)


def clip_gradients(params: list[torch.Tensor], max_norm: float) -> float:
    """Clip to `max_norm` by the norm of all gradients together; returns that norm. Sharded
    gradients' norm is reduced over the ranks (one collective); replicated ones are whole here."""
    if not any(is_sharded(p) for p in params):
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    grads = [p.grad for p in params if p.grad is not None]
    sharded = [g for g in grads if is_sharded(g)]
    plain = [g for g in grads if not is_sharded(g)]
    squares = float(full(torch.nn.utils.get_total_norm(sharded))) ** 2 if sharded else 0.0
    squares += float(torch.nn.utils.get_total_norm(plain)) ** 2 if plain else 0.0
    norm: float = squares**0.5
    coef = min(1.0, max_norm / (norm + 1e-6))  # as torch's clip_grad_norm_
    if coef < 1.0:
        for g in grads:
            g.mul_(coef)
    return norm


def gather_state(model: Module) -> dict[str, torch.Tensor]:
    """The model's whole state dict on the CPU (every rank must call this together)."""
    return {name: full(value).detach().cpu() for name, value in model.state_dict().items()}
