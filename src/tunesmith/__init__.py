"""tunesmith: fine-tune pre-trained language models on the machine you have."""

__version__ = "0.1.0"
