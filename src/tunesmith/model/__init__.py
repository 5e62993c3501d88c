"""Model references, loading, adapters and quantization."""

import logging
import warnings

# PEFT reads a transformers property that transformers 5 deprecated; the warning is not actionable.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

# PEFT imports bitsandbytes, whose CPU backend announces that an optional faster kernel (a hub
# download) is missing; the built-in kernels it falls back to are the ones used and measured here.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
