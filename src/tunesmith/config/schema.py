"""RunConfig: everything a run needs, section by section, with what each key means and allows.

Every section forbids unknown keys, so a typo is an error that names the key and what is allowed
(config/loading.py adds the file:line), instead of a setting silently ignored.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tunesmith.config.graders import AnyGrader
from tunesmith.config.methods import METHODS
from tunesmith.config.sweep import SweepConfig
from tunesmith.data.layouts import RecordFormat
from tunesmith.data.peer_layouts import check_roles_to_train

if TYPE_CHECKING:
    MethodName = str  # a key of the METHODS registry; pydantic checks it as the Literal below
else:
    MethodName = Literal[tuple(METHODS)]

DEFAULT_MODEL = "smollm2-135m-instruct"
Precision = Literal["auto", "fp32", "bf16"]  # auto: bf16 where the device computes it natively, else fp32
PRECISIONS: tuple[str, ...] = get_args(Precision)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


AdapterType = Literal["lora", "qlora", "ia3", "prefix", "prompt", "none"]
ADAPTER_TYPES: tuple[str, ...] = get_args(AdapterType)
LORA_TYPES = ("lora", "qlora")


class FreezeConfig(Section):
    """Partial full fine-tuning: everything else stays at its pre-trained value."""

    top_layers: int | None = Field(None, ge=1, description="train only the top N decoder layers (and the final norm)")
    modules: list[str] | None = Field(
        None, min_length=1, description="train only parameters whose name contains one of these"
    )

    @model_validator(mode="after")
    def _one(self) -> Self:
        if (self.top_layers is None) == (self.modules is None):
            raise ValueError("set exactly one of top_layers, modules")
        return self


class AdapterConfig(Section):
    type: AdapterType = Field("lora", description="lora | qlora (quantized base) | ia3 | prefix | prompt | none (full)")
    r: int = Field(16, ge=1, description="LoRA rank")
    alpha: float = Field(32.0, gt=0, description="LoRA scale numerator: alpha/r, or alpha/sqrt(r) with rslora")
    dropout: float = Field(0.0, ge=0, lt=1)
    targets: str | list[str] = Field(
        "all-linear", description="all-linear | attention | mlp | module names (LoRA, IA3)"
    )
    rslora: bool = Field(False, description="rank-stabilised LoRA scaling alpha/sqrt(r)")
    dora: bool = Field(False, description="weight-decomposed LoRA (magnitude and direction)")
    lora_plus_ratio: float | None = Field(
        None, gt=0, description="LoRA+: learning rate of B = ratio x train.lr (paper: 16)"
    )
    bits: Literal[4, 8] = Field(4, description="qlora: base weights in 4-bit (NF4/FP4) or 8-bit, with bitsandbytes")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="qlora 4-bit: the data type of the quantized weights")
    double_quant: bool = Field(False, description="qlora 4-bit: quantize the quantization constants too")
    virtual_tokens: int = Field(20, ge=1, description="prefix / prompt tuning: learned tokens")
    init_text: str | None = Field(
        None,
        min_length=1,
        description="prefix / prompt tuning: start the virtual tokens from this text, e.g. the task's instruction",
    )
    freeze: FreezeConfig | None = Field(None, description="type none: train only part of the model")

    @model_validator(mode="after")
    def _options_fit_the_type(self) -> Self:
        lora_only = [
            k for k in ("rslora", "dora", "lora_plus_ratio") if getattr(self, k) and self.type not in LORA_TYPES
        ]
        if lora_only:
            raise ValueError(f"{', '.join(lora_only)}: LoRA options; adapter.type is {self.type}")
        if self.init_text is not None and self.type not in ("prefix", "prompt"):
            raise ValueError(f"init_text: prefix and prompt tuning option; adapter.type is {self.type}")
        if self.freeze is not None and self.type != "none":
            raise ValueError(f"freeze: partial full fine-tuning needs adapter.type none, not {self.type}")
        return self


TrainOn = Literal["last", "all_assistant", "all"]


class DataSource(Section):
    path: str = Field(..., description="file (.jsonl .json .csv .parquet), saved dataset folder or hub dataset id")
    weight: float = Field(1.0, gt=0)
    format: RecordFormat = "auto"
    columns: dict[str, str] | None = Field(None, description="layout key -> this source's column")
    key: str | None = Field(None, description="JSON object files: the key holding the list of records")
    split: str = "train"
    train_on: TrainOn | None = Field(None, description="overrides data.train_on for this source")
    dataset: str | None = Field(None, description="LLaMA-Factory: the dataset of the dataset_info.json at path")
    type: Literal["chat_template"] | None = Field(None, description="Axolotl's dataset type (chat messages)")
    field_messages: str | None = Field(
        None, description="Axolotl chat_template: the field holding the messages (default messages)"
    )
    message_property_mappings: dict[str, str] | None = Field(
        None, description="Axolotl: {role: ..., content: ...} property names of a message"
    )
    message_field_role: str | None = Field(None, description="Axolotl's older name for the role property")
    message_field_content: str | None = Field(None, description="Axolotl's older name for the content property")
    roles: dict[str, list[str]] | None = Field(None, description="Axolotl: role -> the source's names for it")
    roles_to_train: list[str] | None = Field(None, description="Axolotl: roles whose turns carry loss (assistant)")

    @model_validator(mode="after")
    def _peer_options(self) -> DataSource:
        axolotl = {
            k
            for k in (
                "field_messages",
                "message_property_mappings",
                "message_field_role",
                "message_field_content",
                "roles",
                "roles_to_train",
            )
            if getattr(self, k) is not None
        }
        if axolotl and self.type is None:
            raise ValueError(f"{', '.join(sorted(axolotl))}: Axolotl's chat options need type: chat_template")
        if self.type is not None and self.dataset is not None:
            raise ValueError("give dataset (LLaMA-Factory) or type (Axolotl), not both")
        if self.roles_to_train is not None:
            check_roles_to_train(self.roles_to_train, self.roles)
        return self

    def chat_template_options(self) -> dict[str, Any] | None:
        if self.type is None:
            return None
        mappings = {
            "role": self.message_field_role or "role",
            "content": self.message_field_content or "content",
            **(self.message_property_mappings or {}),
        }
        return {"field_messages": self.field_messages or "messages", "mappings": mappings, "roles": self.roles}

    def options(self) -> dict[str, Any]:
        return {
            "fmt": self.format,
            "columns": self.columns,
            "key": self.key,
            "split": self.split,
            "dataset": self.dataset,
            "chat_template": self.chat_template_options(),
        }


def _sources(v: Any) -> Any:
    """A plain path stands for a source with default options."""
    if isinstance(v, str):
        return {"path": v}
    if isinstance(v, list):
        return [{"path": x} if isinstance(x, str) else x for x in v]
    return v


class DataConfig(Section):
    train: list[DataSource]
    val: DataSource | None = None
    val_fraction: float | None = Field(None, gt=0, lt=1)
    max_length: int = Field(1024, ge=8)
    packing: bool = Field(False, description="concatenate examples into rows of max_length (exact: no cross-attention)")
    train_on: TrainOn = "all_assistant"
    train_on_reasoning: bool = Field(
        True,
        description="whether an assistant turn's reasoning (its <think> block or "
        "reasoning_content) carries loss; false: only the answer is trained",
    )
    truncation: Literal["truncate", "drop"] = "truncate"
    on_error: Literal["stop", "skip"] = "stop"

    @field_validator("train", mode="before")
    @classmethod
    def _train_sources(cls, v: Any) -> Any:
        v = _sources(v)
        return [v] if isinstance(v, dict) else v

    @field_validator("val", mode="before")
    @classmethod
    def _val_source(cls, v: Any) -> Any:
        return _sources(v)

    @model_validator(mode="after")
    def _one_val_source(self) -> DataConfig:
        if self.val is not None and self.val_fraction is not None:
            raise ValueError("give data.val or data.val_fraction, not both")
        return self


class TrainConfig(Section):
    max_steps: int | None = Field(None, ge=1)
    epochs: float | None = Field(None, gt=0)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(3.0e-4, gt=0)
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    warmup: float = Field(0.03, ge=0, description="fraction of steps if < 1, else a step count")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    seed: int = 0
    precision: Precision = "auto"
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory, ~30% slower"
    )
    optimizer: Literal["adamw", "adamw8bit"] = Field(
        "adamw", description="adamw8bit: bitsandbytes 8-bit states where it runs"
    )
    return_memory: bool = Field(
        False,
        description="glibc: give freed tensors back to the OS at once: lower peak RSS on CPU "
        "(bench/memory.py), slower steps; for the rest of the process",
    )
    max_tokens_per_pass: int | None = Field(
        None,
        ge=0,
        description="a forward pass takes at most this many tokens "
        "(rows x longest): larger batches are split and accumulated, same gradient; "
        "default 1024 on a CPU (bench/README.md), none on a GPU; 0 = no limit",
    )
    distributed: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="under torchrun (or --nproc): ddp replicates the model "
        "and sums gradients; fsdp shards weights, gradients and optimizer state "
        "(FSDP2); one process: no effect",
    )
    log_every: int = Field(10, ge=1)
    max_skipped_steps: int = Field(
        5,
        ge=0,
        description="steps whose loss or gradients are not finite (NaN, inf) are "
        "skipped, weights untouched; more than this many end the run, checkpoints kept",
    )
    profile_steps: int | None = Field(
        None, ge=1, description="profile N steps after 2 warm-up steps: where the time goes, in the run's profile.txt"
    )

    @model_validator(mode="after")
    def _one_length(self) -> TrainConfig:
        if self.max_steps is None and self.epochs is None:
            raise ValueError("give train.max_steps or train.epochs")
        return self


class EarlyStopping(Section):
    """Stop when the watched validation score has not improved for `patience` evaluations."""

    metric: str = Field(
        "val_loss",
        pattern=r"^val_[A-Za-z0-9_]+$",
        description="val_loss, or val_<score> of "
        "eval.generate_every (val_exact_match, val_token_f1, a tool-call metric, ...)",
    )
    patience: int = Field(3, ge=1, description="evaluations without improvement before the run stops")
    min_delta: float = Field(0.0, ge=0, description="an improvement is larger than this")


class EndpointBaseline(Section):
    """A model behind an OpenAI-compatible endpoint, prompted on the test split as a baseline."""

    url: str = Field(..., pattern=r"^https?://", description="base URL of the API, e.g. https://api.openai.com/v1")
    model: str = Field(..., min_length=1, description="the model name to ask for")
    api_key_env: str | None = Field(None, description="environment variable holding the API key")
    price_per_1m_input: float | None = Field(None, ge=0, description="dollars per million prompt tokens")
    price_per_1m_output: float | None = Field(None, ge=0, description="dollars per million completion tokens")
    shots: list[int] | None = Field(None, description="in-context example counts; default: eval.shots, else [0]")
    label: str | None = Field(None, description="how the report names it; default: the model name")
    rpm: float | None = Field(None, gt=0, description="at most this many requests per minute")

    @field_validator("shots")
    @classmethod
    def _shots(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(k < 0 for k in v):
            raise ValueError("shot counts must be 0 or more")
        return sorted(set(v)) if v is not None else None


class EvalConfig(Section):
    every: int | None = Field(None, ge=1, description="validation loss every N steps")
    generate_every: int | None = Field(
        None,
        ge=1,
        description="every N steps (and at the end) score a fixed sample "
        "of the validation split by generation; logged as val_<metric>",
    )
    generate_limit: int = Field(32, ge=1, description="validation examples scored by generation: the first N")
    early_stopping: EarlyStopping | None = None
    baselines: list[EndpointBaseline] = Field(
        default_factory=list,
        description="models behind OpenAI-compatible endpoints scored on the test split like the prompting baselines",
    )
    machine_price_per_hour: float | None = Field(
        None,
        ge=0,
        description="what this machine costs per hour: prices the tuned model's requests next to an endpoint's",
    )
    test: str | None = Field(None, description="test data scored after training (chat or prompt/completion)")
    limit: int | None = Field(None, ge=1)
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(32, ge=1, description="prompts generated together (test, baselines, forgetting probe)")
    shots: list[int] = Field(
        default_factory=list, description="prompting baselines of the base model: 0 = zero-shot, k = k-shot"
    )
    shot_seed: int = 0
    system: str | None = Field(None, description="system prompt for the prompting baselines")
    metric: str | None = Field(None, description="extra metric as module:function(prediction, reference)")
    primary: str = Field("exact_match", description="the score the report compares and recommends on")
    latency_samples: int = Field(8, ge=0, description="requests timed one at a time for latency")

    @field_validator("shots")
    @classmethod
    def _shots(cls, v: list[int]) -> list[int]:
        if any(k < 0 for k in v):
            raise ValueError("shot counts must be 0 or more")
        return sorted(set(v))


class SelfDistillConfig(Section):
    """forgetting.self_distill: the starting model teaches the tuned one on general prompts, on the
    tuned model's own replies (on-policy reverse KL), next to the task's loss."""

    weight: float = Field(
        1.0,
        gt=0,
        description="weight of the reverse KL (tuned ‖ starting model) on the sampled "
        "replies, per token of the task batch it rides with",
    )
    prompts: str = Field(
        "self",
        description="'self' (the bundled general prompts self-replay uses) or a data path "
        "whose examples' prompts are used",
    )
    per_batch: int = Field(2, ge=1, description="general prompts answered and scored with every batch")
    max_new_tokens: int = Field(48, ge=1, description="the longest reply sampled")
    temperature: float = Field(1.0, ge=0, description="sampling temperature of the replies (0 = greedy)")


class ForgettingConfig(Section):
    """What general capability the run costs (probe) and what limits the loss (mitigations)."""

    probe: bool = Field(False, description="general QA and drift, base vs tuned, after training")
    probe_limit: int | None = Field(
        None,
        ge=3,
        description="probe with the first N of the 239 questions and a third "
        "as many of the 50 drift prompts: quicker, wider intervals",
    )
    text: str | None = Field(None, description="general text data for perplexity, base vs tuned")
    text_limit: int = Field(200, ge=1)
    replay: float = Field(0.0, ge=0, lt=1, description="share of training examples drawn from replay data")
    replay_source: str = Field(
        "self", description="'self' (the base model's own answers to general prompts) or a data path"
    )
    kl: float = Field(0.0, ge=0, description="weight of KL(base || tuned) on replay tokens")
    l2sp: float = Field(0.0, ge=0, description="weight of the L2-SP pull towards the starting weights")
    self_distill: SelfDistillConfig | None = Field(
        None,
        description="on-policy self-distillation from the starting model on general prompts (methods sft and distill)",
    )
    freeze_layers: int = Field(
        0, ge=0, description="freeze the lowest N decoder layers (and embeddings when fully fine-tuning)"
    )
    interpolate: list[float] = Field(
        default_factory=list,
        description="after training, also score the models "
        "θ₀ + α(θ − θ₀) between base and tuned at these α (task and forgetting probe)",
    )

    @field_validator("interpolate")
    @classmethod
    def _alphas(cls, v: list[float]) -> list[float]:
        if any(not 0 <= a <= 1 for a in v):
            raise ValueError("interpolation weights α lie in [0, 1] (0 = the base model, 1 = the tuned one)")
        return sorted(set(v))

    @model_validator(mode="after")
    def _kl_needs_replay(self) -> ForgettingConfig:
        if self.kl > 0 and self.replay == 0:
            raise ValueError("forgetting.kl anchors on replay data; set forgetting.replay above 0 too")
        return self


class PreferenceConfig(Section):
    """method dpo: which preference loss, and its strength."""

    loss: Literal["sigmoid", "ipo", "hinge", "simpo", "orpo", "kto"] = Field(
        "sigmoid", description="sigmoid (DPO) | ipo | hinge (SLiC) | simpo, orpo (no reference) | kto (unpaired)"
    )
    beta: float | None = Field(None, gt=0, description="default 0.1 (simpo 2.0); orpo: weight of the odds-ratio term")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="sigmoid: assumed share of flipped labels")
    simpo_gamma: float = Field(1.0, ge=0, description="simpo: target margin between chosen and rejected")
    nll_weight: float = Field(
        0.0,
        ge=0,
        description="sigmoid, ipo, hinge, simpo: add this times the chosen reply's "
        "NLL per token (RPO), so that both replies' likelihood cannot fall together",
    )
    desirable_weight: float = Field(1.0, gt=0, description="kto: weight of desirable responses")
    undesirable_weight: float = Field(1.0, gt=0, description="kto: weight of undesirable responses")


class RewardSpec(Section):
    """One reward of online RL: a function (built-in or module:function), a reward model, or an OpenAI grader."""

    function: str | None = Field(
        None, description="exact_match | regex | json_valid | length_penalty | module:function"
    )
    model: str | None = Field(None, description="a method: reward run or its export")
    grader: AnyGrader | None = Field(
        None,
        description="one of OpenAI's graders (string_check, text_similarity, python, "
        "score_model, multi), as its API takes them",
    )
    weight: float = 1.0
    pattern: str | None = Field(None, description="regex: the pattern the whole reply must match")
    target_length: int | None = Field(None, ge=1, description="length_penalty: characters allowed before the penalty")

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if sum(x is not None for x in (self.function, self.model, self.grader)) != 1:
            raise ValueError("set exactly one of function, model, grader")
        if self.function == "regex":
            if not self.pattern:
                raise ValueError("function regex needs pattern")
            try:
                re.compile(self.pattern)
            except re.error as e:
                raise ValueError(f"pattern {self.pattern!r}: {e}") from None
        if self.function == "length_penalty" and self.target_length is None:
            raise ValueError("function length_penalty needs target_length")
        return self


class RLConfig(Section):
    """method grpo / rloo: sample a group of replies per prompt, reward them, push the policy
    towards the better ones (clipped ratio) while a KL term holds it near the reference."""

    rewards: list[RewardSpec] = Field(default_factory=list, min_length=0)
    group_size: int = Field(4, ge=2, description="replies sampled per prompt; advantages compare within the group")
    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    beta: float = Field(0.04, ge=0, description="KL penalty to the reference (the starting model); 0 = none")
    clip: float = Field(0.2, gt=0, lt=1, description="policy ratio clipped to [1 - clip, 1 + clip]")
    iterations: int = Field(1, ge=1, description="optimizer steps on each batch of sampled replies (μ)")
    sandbox: Literal["auto", "bubblewrap", "process"] = Field(
        "auto",
        description="where python graders' code runs: bubblewrap (no network, no files but its own /tmp, no "
        "processes), process (a plain child process: only for code you trust), auto (bubblewrap "
        "where installed)",
    )


class TeacherSpec(Section):
    """One of several teachers (distill.teachers)."""

    teacher: str = Field(..., description="model reference with the same tokenizer as the student")
    weight: float = Field(1.0, gt=0, description="its share of the divergence, among the teachers of an example")
    source: str | None = Field(
        None,
        description="a data.train path: this teacher teaches that source's examples "
        "(the teachers without a source teach the rest)",
    )


class DistillConfig(Section):
    """method distill: the student (`model`) learns the teacher's next-token distribution."""

    teacher: str | None = Field(
        None,
        description="model reference with the same tokenizer as the student, or an "
        "OpenAI-compatible endpoint (https://host/v1) serving such a model (on_policy only)",
    )
    teachers: list[TeacherSpec] = Field(
        default_factory=list,
        description="several loaded teachers instead of one: a weight each, or one per data source",
    )
    teacher_model: str | None = Field(None, description="endpoint teacher: the model name to ask for")
    api_key_env: str | None = Field(None, description="endpoint teacher: environment variable holding the API key")
    price_per_1k_tokens: float | None = Field(
        None, ge=0, description="endpoint teacher: price of 1,000 scored tokens, for the report's cost"
    )
    loss: Literal["forward_kl", "reverse_kl", "jsd"] = Field("forward_kl", description="divergence to the teacher")
    beta: float = Field(
        0.5, ge=0, le=1, description="jsd: weight of the teacher in the mixture (0 = forward, 1 = reverse KL)"
    )
    temperature: float = Field(1.0, gt=0, description="both distributions softened by T; the loss is scaled by T²")
    kd_ratio: float = Field(
        1.0, ge=0, le=1, description="share of the distillation loss; the rest is cross-entropy on the data"
    )
    teacher_topk: int | None = Field(
        None,
        ge=1,
        description="precompute the teacher's top-k log-probs once, cached "
        "on disk (forward_kl), instead of running it every step",
    )
    chunk: int = Field(256, ge=1, description="positions whose logits are computed at once")
    on_policy: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of batches whose replies the student samples itself "
        "(GKD's λ; 1 = fully on-policy): the divergence on its own tokens instead of the data's",
    )
    max_new_tokens: int = Field(64, ge=1, description="on-policy: the longest reply the student samples")
    sample_temperature: float = Field(
        1.0, ge=0, description="on-policy: the student's sampling temperature (0 = greedy)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.teacher_topk and self.loss != "forward_kl":
            raise ValueError(
                f"teacher_topk: a top-k cache knows the teacher only on its top k; loss {self.loss} needs "
                "the whole distribution (use forward_kl, or drop teacher_topk)"
            )
        if self.teacher_topk and self.on_policy > 0:
            raise ValueError(
                "teacher_topk: a cache covers the data's tokens only; on_policy batches are the student's "
                "own replies, which the teacher must score as they come (drop teacher_topk)"
            )
        if self.teachers:
            if self.teacher:
                raise ValueError("distill: give teacher or teachers, not both")
            if self.teacher_topk:
                raise ValueError("teacher_topk: the top-k cache holds one teacher; drop it to use several teachers")
            remote = next((t.teacher for t in self.teachers if t.teacher.startswith(("http://", "https://"))), None)
            if remote:
                raise ValueError(
                    f"teachers: {remote}: several teachers are loaded models; an endpoint teaches alone "
                    "(distill.teacher)"
                )
        if self.teacher and self.teacher.startswith(("http://", "https://")):
            if self.on_policy == 0:
                raise ValueError(
                    f"teacher {self.teacher}: an endpoint scores only the tokens it is shown, so it "
                    "teaches the student's own replies; set distill.on_policy above 0"
                )
            if self.loss != "reverse_kl":
                raise ValueError(
                    f"loss {self.loss}: an endpoint teacher gives the log-probabilities of the sampled "
                    "tokens only, which estimate reverse_kl (set loss: reverse_kl)"
                )
            if not self.teacher_model:
                raise ValueError(
                    f"teacher {self.teacher}: an endpoint needs distill.teacher_model, the model to ask for"
                )
        return self


class CompareConfig(Section):
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="variant name -> overrides (dotted keys), for tunesmith compare"
    )


class OutputConfig(Section):
    dir: str = "runs"
    save_every: int | None = Field(500, ge=1, description="checkpoint every N steps; null = never")
    keep: int = Field(2, ge=1)
    keep_best: str | None = Field(
        None,
        pattern=r"^val_[A-Za-z0-9_]+$",
        description="keep the weights of the best "
        "validation score (val_loss or a val_<score> of eval.generate_every) and make them "
        "the run's final model",
    )


class RunConfig(Section):
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    model: str = DEFAULT_MODEL
    trust_remote_code: bool = Field(
        False,
        description="run Python code shipped in the model folder (custom "
        "architectures); off unless set here, with a warning when on",
    )
    method: MethodName = Field("sft", description=" | ".join(METHODS))
    adapter: AdapterConfig = AdapterConfig()
    data: DataConfig
    train: TrainConfig
    eval: EvalConfig = EvalConfig()
    forgetting: ForgettingConfig = ForgettingConfig()
    preference: PreferenceConfig = PreferenceConfig()
    rl: RLConfig = RLConfig()
    distill: DistillConfig = DistillConfig()
    output: OutputConfig = OutputConfig()
    compare: CompareConfig = CompareConfig()
    sweep: SweepConfig | None = Field(None, description="search space and options of tunesmith sweep (config/sweep.py)")
    report_to: list[Literal["tensorboard", "mlflow", "wandb", "trackio"]] = Field(
        default_factory=list,
        description="experiment trackers the run reports to, any of tensorboard, mlflow, wandb, "
        "trackio (engine/trackers/)",
    )

    @model_validator(mode="after")
    def _settings_agree(self) -> Self:
        """Settings of different sections that only work together, checked in this order."""
        self._adapter_fits_the_method()
        self._method_options_agree()
        self._layout_fits_the_adapter()
        self._interpolation_is_measured()
        self._watched_scores_are_measured()
        return self

    def _adapter_fits_the_method(self) -> None:
        if self.train.gradient_checkpointing and self.adapter.type == "prefix":
            raise ValueError(
                "train.gradient_checkpointing: prefix tuning feeds its prefixes as a KV cache, which "
                "recomputed layers cannot take; turn one of them off"
            )
        if self.data.packing and self.method != "sft":
            raise ValueError(
                f"data.packing: only sft packs examples into rows; method {self.method} compares whole responses"
            )
        if self.method == "reward":
            if self.adapter.type in ("prefix", "prompt"):
                raise ValueError(
                    f"adapter.type {self.adapter.type}: a reward model reads its score off the last token; "
                    "virtual tokens do not reach it there (use lora, qlora, ia3 or none)"
                )
            generated = [
                k
                for k, on in (
                    ("eval.test", self.eval.test),
                    ("eval.shots", self.eval.shots),
                    ("forgetting.probe", self.forgetting.probe),
                    ("forgetting.replay", self.forgetting.replay),
                )
                if on
            ]
            if generated:
                raise ValueError(
                    f"{generated[0]}: method reward trains a scorer, not a model that replies; "
                    "its measure is pairwise accuracy on data.val"
                )

    def _method_options_agree(self) -> None:
        if self.preference.nll_weight and self.preference.loss in ("orpo", "kto"):
            raise ValueError(
                f"preference.nll_weight: {self.preference.loss} "
                + (
                    "has its NLL term already (beta weighs the odds ratio)"
                    if self.preference.loss == "orpo"
                    else "judges single replies; there is no chosen one to keep likely"
                )
            )
        if self.method == "distill" and not (self.distill.teacher or self.distill.teachers):
            raise ValueError("distill.teacher: method distill needs a teacher model")
        sourced = [t.source for t in self.distill.teachers if t.source is not None]
        unknown = next((src for src in sourced if src not in [s.path for s in self.data.train]), None)
        if unknown:
            raise ValueError(f"distill.teachers: source {unknown} is not one of data.train's paths")
        if self.distill.on_policy > 0 and self.data.packing:
            raise ValueError(
                "distill.on_policy: the student replies to each example's prompt; packing puts several "
                "examples in one row (set data.packing: false)"
            )
        if sourced and self.data.packing:
            raise ValueError(
                "distill.teachers: a teacher per source needs each row to hold one example; packing "
                "mixes them (set data.packing: false)"
            )
        if self.method in ("grpo", "rloo") and not self.rl.rewards:
            raise ValueError(
                f"rl.rewards: method {self.method} needs at least one reward (a function or a reward model)"
            )
        if self.forgetting.self_distill and self.method not in ("sft", "distill"):
            raise ValueError(
                f"forgetting.self_distill: rides with the batches of methods sft and distill, not {self.method}"
            )
        if self.forgetting.self_distill and self.train.distributed == "fsdp":
            raise ValueError(
                "forgetting.self_distill samples replies, a different number of forward passes on each rank; use ddp"
            )

    def _layout_fits_the_adapter(self) -> None:
        """Packing and FSDP sharding against what the adapter and the method need."""
        if self.data.packing and self.adapter.type in ("prefix", "prompt"):
            raise ValueError(
                f"data.packing: packed rows restart positions mid-row; {self.adapter.type} tuning "
                "prepends its virtual tokens once per row, so it cannot pack"
            )
        if self.train.distributed == "fsdp":
            unsharded = [
                why
                for on, why in (
                    (
                        self.method in ("grpo", "rloo"),
                        f"method {self.method} generates replies, a different number of "
                        "forward passes on each rank, and sharded layers gather in every one",
                    ),
                    (self.adapter.type == "qlora", "a 4-bit base is not sharded by FSDP"),
                    (
                        self.adapter.type in ("prefix", "prompt"),
                        f"{self.adapter.type} tuning's virtual tokens live outside the decoder layers that are sharded",
                    ),
                    (bool(self.forgetting.l2sp), "forgetting.l2sp keeps a whole copy of the starting weights"),
                )
                if on
            ]
            if unsharded:
                raise ValueError(f"train.distributed fsdp: {unsharded[0]}; use ddp")

    def _interpolation_is_measured(self) -> None:
        if self.forgetting.interpolate:
            missing = [
                k for k, on in (("eval.test", self.eval.test), ("forgetting.probe", self.forgetting.probe)) if not on
            ]
            if missing:
                raise ValueError(
                    f"forgetting.interpolate: each interpolated model is scored on the task and the "
                    f"forgetting probe; set {' and '.join(missing)}"
                )
            if self.adapter.type in ("prefix", "prompt") or self.method == "reward":
                raise ValueError(
                    f"forgetting.interpolate: {self.adapter.type if self.method != 'reward' else 'a reward model'}"
                    " has no base weights to interpolate towards"
                )

    def _watched_scores_are_measured(self) -> None:
        """Early stopping and keep_best watch a validation score: it must be one the run measures."""
        watched = [
            (f"{where}", metric)
            for where, metric in (
                ("eval.early_stopping.metric", self.eval.early_stopping.metric if self.eval.early_stopping else None),
                ("output.keep_best", self.output.keep_best),
                ("sweep.metric", self.sweep.metric if self.sweep else None),
            )
            if metric
        ]
        for where, metric in watched:
            if metric == "val_loss" and self.eval.every is None and where != "sweep.metric":
                raise ValueError(
                    f"{where} val_loss: validation loss is measured every eval.every steps; set eval.every"
                )
            if metric != "val_loss" and self.eval.generate_every is None:
                raise ValueError(
                    f"{where} {metric}: scores are measured by generation every eval.generate_every "
                    "steps; set eval.generate_every"
                )
        if self.method == "reward" and self.eval.generate_every:
            raise ValueError("eval.generate_every: method reward trains a scorer, not a model that replies")

    def run_dir(self) -> Path:
        return Path(self.output.dir) / self.name

    def to_yaml(self) -> str:
        text: str = yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
        return text
