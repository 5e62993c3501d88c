"""Model references -> a local Hugging Face folder.

A reference is one of: the alias of an embedded model (model/embedded.py), a local HF folder, a `.gguf`
file, a tunesmith run directory, or a hub id (served from the local cache; a clear error, never a
hang, when it is not there and the network is not). GGUF files are converted once to a cached HF
folder (safetensors), because training and export need real weights, not a GGUF reader.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tunesmith import atomic
from tunesmith.errors import UserError
from tunesmith.model.embedded import DEFAULT_ALIAS, EMBEDDED

BUNDLED_ALIAS = DEFAULT_ALIAS
NOT_LOCAL = f"no such local path or alias (embedded models: {', '.join(EMBEDDED)})"
HUB_TIMEOUT_S = 10  # an unreachable hub is an error after this long, not a hang
# huggingface_hub reads its download timeout once, at import: set it before anything imports it.
os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", str(HUB_TIMEOUT_S))
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def home() -> Path:
    """Where tunesmith caches converted models: $TUNESMITH_HOME or ~/.cache/tunesmith."""
    return Path(os.environ.get("TUNESMITH_HOME") or Path.home() / ".cache" / "tunesmith")


@dataclass(frozen=True)
class Resolved:
    """A model reference made concrete.

    `path` is an HF folder holding full weights (a base model or a full fine-tune). `adapter` is a
    PEFT adapter folder to put on top of it, when the reference was a LoRA run.
    """

    path: Path
    adapter: Path | None = None
    reference: str = ""


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() and ((path / "final").is_dir() or (path / "checkpoints").is_dir())


def resolve(reference: str) -> Resolved:
    """Turn any model reference into local folders, converting or looking up caches as needed."""
    if reference in EMBEDDED:
        gguf = EMBEDDED[reference].gguf(home() / "gguf")
        return Resolved(convert_gguf(gguf, name=reference), reference=reference)
    path = Path(reference).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"{path}: GGUF file not found")
        return Resolved(convert_gguf(path), reference=reference)
    if path.is_dir():
        if is_run_dir(path):
            return resolve_run(path)
        if (path / "adapter_config.json").is_file():
            return resolve_adapter_dir(path)
        if (path / "config.json").is_file():
            refuse_pickled_weights(path, "model.safetensors")
            return Resolved(path.resolve(), reference=reference)
        raise UserError(f"{path}: folder is neither a Hugging Face model (config.json), an adapter nor a tunesmith run")
    if path.exists():
        raise UserError(f"{path}: not a model folder, a .gguf file or a run directory")
    if not HUB_ID.match(reference):
        raise UserError(f"{reference}: model path not found (and not a known alias or hub id)")
    return Resolved(hub_snapshot(reference), reference=reference)


def resolve_run(run: Path) -> Resolved:
    """A run directory means its final model."""
    final = run / "final"
    if not final.is_dir():
        raise UserError(f"{run}: run has no final model yet (train it to the end, or resume it with --resume)")
    if (final / "adapter_config.json").is_file():
        return resolve_adapter_dir(final, reference=str(run))
    return Resolved(final.resolve(), reference=str(run))


PICKLED = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt")


def refuse_pickled_weights(folder: Path, expected: str) -> None:
    """Weights are read from safetensors only: unpickling a file (PyTorch's .bin/.pt) can run any
    code its author put in it, and a model folder is often someone else's."""
    if any(folder.glob("*.safetensors")):
        return
    pickled = sorted(p.name for pattern in PICKLED for p in folder.glob(pattern))
    if pickled:
        raise UserError(
            f"{folder}: weights only as pickle files ({', '.join(pickled[:3])}); tunesmith loads "
            f"{expected} only, since unpickling can run code: convert them where you trust the file"
        )


def resolve_adapter_dir(adapter: Path, reference: str | None = None) -> Resolved:
    import json

    refuse_pickled_weights(adapter, "adapter_model.safetensors")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    base_ref = cfg.get("base_model_name_or_path")
    if not base_ref:
        raise UserError(f"{adapter / 'adapter_config.json'}: no base_model_name_or_path to load the adapter onto")
    base = resolve(base_ref)
    return Resolved(base.path, adapter=adapter.resolve(), reference=reference or str(adapter))


def hub_snapshot(repo_id: str) -> Path:
    """A hub model from the local cache; downloads only when the hub is reachable and allowed."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        raise UserError(f"{repo_id}: hub models need huggingface_hub installed") from None
    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]
    try:
        found = Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=patterns))
        stay_offline()
        return found
    except HFValidationError:
        raise UserError(f"{repo_id}: not a model alias, a local path, a .gguf file or a valid hub id") from None
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "TRUE", "yes"):
        raise UserError(f"{repo_id}: {NOT_LOCAL}, and not in the local Hugging Face cache (HF_HUB_OFFLINE is set)")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, etag_timeout=HUB_TIMEOUT_S))
    except Exception as e:  # network down, unknown repo, gated repo ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"{repo_id}: {NOT_LOCAL}, not in the local Hugging Face cache, and could not be downloaded ({reason[:160]})"
        ) from None


def stay_offline() -> None:
    """The model is in the local cache, so the run needs nothing from the hub: the libraries' own
    calls (huggingface_hub's agent registry, transformers' kernel look-ups) are turned off too,
    in this process and the ones it starts."""
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True


def content_key(path: Path, sample: int = 1 << 20) -> str:
    """A cache key from the file's size and its first and last MiB: the same file installed in
    another place (another virtualenv, another clone) maps to the same cached conversion."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(sample))
        f.seek(max(0, size - sample))
        h.update(f.read(sample))
    return h.hexdigest()[:12]


SOURCE_NOTE = "gguf_source.json"


def write_source_note(gguf_path: Path, folder: Path) -> None:
    """What the HF folder cannot hold but a GGUF export needs back: the llama.cpp name of the
    tokenizer's splitting rule (`tokenizer.ggml.pre`)."""
    import json

    from gguf import GGUFReader

    try:
        field = GGUFReader(gguf_path).get_field("tokenizer.ggml.pre")
        note = {"file": gguf_path.name, "tokenizer.ggml.pre": field.contents() if field is not None else None}
        atomic.write_text(folder / SOURCE_NOTE, json.dumps(note, indent=2))
    except (OSError, ValueError):  # a read-only cache: the export falls back to reading the tokenizer
        pass


def convert_gguf(gguf: Path, name: str | None = None) -> Path:
    """Dequantize a GGUF file once into a cached HF folder (safetensors, tokenizer, chat template)."""
    gguf = gguf.resolve()
    target = home() / "models" / f"{name or gguf.stem}-{content_key(gguf)}"
    if is_converted(target):
        if not (target / SOURCE_NOTE).is_file():  # converted by an earlier version
            write_source_note(gguf, target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with conversion_lock(target):
        if not is_converted(target):  # no other process converted it while this one waited
            from tunesmith.model.gguf_once import parsed_once

            with parsed_once():
                _convert(gguf, target, name)
    return target


def is_converted(target: Path) -> bool:
    return (target / "config.json").is_file() and (target / "model.safetensors").is_file()


@contextlib.contextmanager
def conversion_lock(target: Path):
    """One process converts a file at a time: another waits for it (Gemma 3's conversion takes half a
    minute), then finds the folder there. Closing the file releases the lock."""
    import fcntl

    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _convert(gguf: Path, target: Path, name: str | None) -> None:
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(
        f"[dim]converting {gguf.name} to a Hugging Face folder (once) -> {target}[/dim]"
    )
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        # transformers' GGUF reader draws its own tqdm bar; our one line above says what happens
        with contextlib.redirect_stderr(io.StringIO()):
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as e:
        raise UserError(f"{gguf}: could not load GGUF file ({str(e).splitlines()[0][:200]})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    # Dequantized weights are plain tensors; the GGUF quantizer must go or save_pretrained refuses.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None  # type: ignore[assignment]  # transformers' attributes, typed as Modules by torch
    model.is_quantized = False  # type: ignore[assignment]
    model.config.name_or_path = name or gguf.stem
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        hf_logging.disable_progress_bar()
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_source_note(gguf, tmp)
        hf_logging.enable_progress_bar()
        if target.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
