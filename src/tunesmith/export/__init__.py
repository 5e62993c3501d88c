"""A run or model as files other tools load: a PEFT adapter or Hugging Face folder, or one GGUF
file, each with a model card."""

FORMATS = ("hf", "gguf")  # a Hugging Face (or PEFT adapter) folder | one GGUF file
GGUF_QUANTS = ("f16", "q8_0")  # GGUF weight types written
