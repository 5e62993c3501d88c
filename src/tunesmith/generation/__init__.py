"""Generation for many requests at once: continuous batching over one model with a different
adapter per row.

`engine.GenerationEngine` admits requests between decode steps, prefills each newcomer, decodes
every active row in one forward pass per step and retires finished rows at once. What makes that
possible on top of a transformers model:

- `kv_arena`: one block of key/value memory per layer, the whole KV budget; each row holds a
  contiguous range of it for its prompt and `max_tokens`, so admission is by tokens and the
  budget cannot be exceeded;
- `row_attention`: an attention function that writes each row's new keys and values into its
  range and attends over that row alone, so rows of any length share a forward pass;
- `row_adapters`: LoRA and IA3 layers applying each row's own adapter (or none) in that pass;
- `sampling`: each row's next token by its own settings (greedy, temperature, top-p, seed,
  a tool-call grammar) and its log-probabilities.
"""
