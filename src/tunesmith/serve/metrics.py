"""`GET /metrics` in Prometheus' text format, as llama.cpp's and vLLM's servers expose it: per
base model (label `model`), the requests waiting and decoding, the KV cache held and its budget,
tokens in and out, time to first token, and generated tokens per second over the last 10 s
(`rate(tunesmith_generation_tokens_total[1m])` gives the same over any window)."""

from __future__ import annotations

from collections.abc import Callable, Iterator


def render(engines: Callable[[], dict]) -> bytes:
    """The metrics of every started engine (`engines()`: base model id -> GenerationEngine)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

    from tunesmith.generation.engine import FIRST_TOKEN_BUCKETS

    class Collector:
        def collect(self) -> Iterator[Metric]:
            running = dict(engines())
            gauges = {
                "queue_requests": ("requests waiting for a row", lambda e: e.queued),
                "active_rows": ("requests decoding now", lambda e: e.active),
                "kv_cache_used_tokens": ("KV cache slots held by active rows", lambda e: e.arena.used),
                "kv_cache_peak_tokens": ("the most KV cache slots held at once", lambda e: e.arena.peak_tokens),
                "kv_cache_budget_tokens": ("KV cache slots in the budget", lambda e: e.budget_tokens),
                "generation_tokens_per_second": (
                    "tokens generated per second over the last 10 s",
                    lambda e: e.counters.tokens_per_second,
                ),
            }
            for name, (doc, value) in gauges.items():
                gauge = GaugeMetricFamily(f"tunesmith_{name}", doc, labels=["model"])
                for model, engine in running.items():
                    gauge.add_metric([model], value(engine))
                yield gauge
            counters = {
                "requests": ("requests submitted", lambda e: e.counters.requests),
                "prompt_tokens": ("prompt tokens prefilled", lambda e: e.counters.prompt_tokens),
                "generation_tokens": ("tokens generated", lambda e: e.counters.generated_tokens),
                "decode_steps": ("decode steps (one forward pass for every active row)", lambda e: e.counters.steps),
                "busy_seconds": ("seconds spent in generation steps", lambda e: e.counters.busy_s),
            }
            for name, (doc, value) in counters.items():
                counter = CounterMetricFamily(f"tunesmith_{name}", doc, labels=["model"])
                for model, engine in running.items():
                    counter.add_metric([model], value(engine))
                yield counter
            histogram = HistogramMetricFamily(
                "tunesmith_time_to_first_token_seconds",
                "from a request's submission to its first token",
                labels=["model"],
            )
            for model, engine in running.items():
                c = engine.counters
                buckets = [(str(bound), count) for bound, count in zip(FIRST_TOKEN_BUCKETS, c.first_token_buckets)]
                histogram.add_metric([model], buckets + [("+Inf", c.first_token_count)], c.first_token_s_sum)
            yield histogram

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())
    return generate_latest(registry)
