"""Data: records from files, validated examples, token ids with loss masks, batches."""
