"""Model references, loading, adapters and export."""

import warnings

# PEFT reads a transformers property that transformers 5 deprecated; the warning is not actionable.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
