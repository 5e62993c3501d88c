"""What a fine-tune costs in general capability (the probe, its noise floor) and what limits the
loss (replay data); the base model as the reference both are measured against."""
