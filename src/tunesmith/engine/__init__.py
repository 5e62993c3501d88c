"""How it is optimized: one training loop for every method."""
