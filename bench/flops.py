"""The FLOPs one epoch of training needs, counted from the model's shape and the examples' lengths.

Model FLOP utilisation (MFU) divides these by the time taken and the machine's matmul peak. The
count is of what training a decoder on these examples must compute, whichever tool runs it, so
two tools' MFU compare: padding, attention across packed neighbours, recomputation (gradient
checkpointing) and a head run at positions without a loss are work a tool chose, not counted.

Per example of L tokens, C of them trained (loss positions), with d the model width, V the
vocabulary, n layers, a = heads x head width, N_body the weights of the decoder layers' linear
maps (the embedding and head not included), and R = sum over adapted maps of r x (in + out):

    body       k x N_body x L          k = 2 forward + 2 input gradients (+ 2 weight gradients, full)
    attention  3 x n x 4 x a x L(L+1)/2    scores and weighted sum over the causal pairs; backward 2x forward
    head       k x d x V x C           only where a loss is taken
    LoRA       6 x R x L               forward, input and weight gradients of the two small matmuls
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    d: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def of(cls, config) -> Shape:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(
            config.hidden_size,
            config.intermediate_size,
            config.num_hidden_layers,
            config.num_attention_heads,
            getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
            head_dim,
            config.vocab_size,
        )

    def linear_maps(self) -> list[tuple[int, int]]:
        """(in, out) of one decoder layer's linear maps: q, k, v, o, gate, up, down."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return [
            (self.d, q),
            (self.d, kv),
            (self.d, kv),
            (q, self.d),
            (self.d, self.ffn),
            (self.d, self.ffn),
            (self.ffn, self.d),
        ]

    def body_weights(self) -> int:
        return self.layers * sum(i * o for i, o in self.linear_maps())

    def lora_rank_width(self, r: int) -> int:
        return self.layers * sum(r * (i + o) for i, o in self.linear_maps())


def example_flops(shape: Shape, length: int, trained: int, full: bool, lora_r: int | None) -> dict:
    """FLOPs of one forward and backward pass over one example, by part."""
    k = 6 if full else 4
    attention = 3 * shape.layers * 4 * shape.heads * shape.head_dim * length * (length + 1) // 2
    parts = {
        "body": k * shape.body_weights() * length,
        "attention": attention,
        "head": k * shape.d * shape.vocab * trained,
        "lora": 6 * shape.lora_rank_width(lora_r) * length if lora_r else 0,
    }
    return parts


def epoch_flops(shape: Shape, lengths: list[tuple[int, int]], full: bool, lora_r: int | None) -> dict:
    """Summed over (length, trained tokens) of every example, with the total."""
    totals = {"body": 0, "attention": 0, "head": 0, "lora": 0}
    for length, trained in lengths:
        for part, value in example_flops(shape, length, trained, full, lora_r).items():
            totals[part] += value
    return {**totals, "total": sum(totals.values())}
