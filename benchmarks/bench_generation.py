"""Generation benchmarks for lesson 05: what the KV cache and continuous batching buy.

    python benchmarks/bench_generation.py      # also part of `make bench`

Measured on the trained ``tool-log-lm`` with one torch thread (decode on a CPU slows down
with more threads fighting over two cores), each ratio taken within one run:

- **KV cache**: tokens/s generating 255 tokens with and without the cache, batch 1 and 8;
  the two paths must give the same tokens.
- **Continuous vs static batching**: 64 requests like lesson 05's (``gpt.log_requests``:
  one or two real log lines in, 16 tokens up to the rest of the context out, most short) through
  ``GenerationEngine``, 8 running at most: useful tokens/s, mean and p99 latency (all
  requests arrive at once), and the same tokens from both;
- **KV memory**: while the continuous engine runs, the share of allocated token slots that
  hold no token — paged blocks against a reservation of the whole context per sequence.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from helpers import models, training  # noqa: E402
from helpers.generation import GenerationEngine, drive  # noqa: E402
from helpers.gpt import generate, log_requests  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def kv_cache_speedup(model, new_tokens: int = 255, batch: int = 1) -> dict:
    prompts = [[0]] * batch
    rates, outputs = {}, {}
    for cached in (False, True):
        generate(model, prompts, 8, use_cache=cached)  # warm-up
        start = time.perf_counter()
        outputs[cached] = generate(model, prompts, new_tokens, use_cache=cached)
        rates[cached] = new_tokens * batch / (time.perf_counter() - start)
    return {"batch": batch, "new_tokens": new_tokens, "uncached_tokens_per_s": rates[False],
            "cached_tokens_per_s": rates[True], "speedup": rates[True] / rates[False],
            "same_tokens": bool(torch.equal(outputs[False], outputs[True]))}


def batching_comparison(model, n_requests: int = 64, max_running: int = 8, seed: int = 0) -> dict:
    """Lesson 05's workload, larger: 1-2 real log lines in, 16 tokens to the context out,
    most of them short."""
    requests = log_requests(n_requests, model.config.context, seed)
    results, outputs = {}, {}
    for mode in ("static", "continuous"):
        engine = GenerationEngine(model, n_blocks=n_requests * 16, max_running=max_running,
                                  static=mode == "static")
        run = drive(engine, requests)
        summary = run.summary()
        results[mode] = {"tokens_per_s": summary["tokens/s"],
                         "mean_latency_s": summary["mean latency s"],
                         "p99_latency_s": summary["p99 latency s"],
                         "paged_waste": run.paged_waste, "reserved_waste": run.reserved_waste}
        outputs[mode] = run.outputs
    return {**results, "requests": n_requests, "max_running": max_running,
            "throughput_ratio": results["continuous"]["tokens_per_s"]
            / results["static"]["tokens_per_s"],
            "mean_latency_ratio": results["static"]["mean_latency_s"]
            / results["continuous"]["mean_latency_s"],
            "same_tokens": outputs["static"] == outputs["continuous"]}


def main() -> dict:
    torch.set_num_threads(1)
    training.ensure_tool_log_lm()
    model = models.load_model("tool-log-lm", device="cpu").module
    results = {"torch_threads": 1,
               "kv_cache": [kv_cache_speedup(model, batch=b) for b in (1, 8)],
               "batching": batching_comparison(model)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "generation.json").write_text(json.dumps(results, indent=2))
    for r in results["kv_cache"]:
        print(f"KV cache, batch {r['batch']}, {r['new_tokens']} tokens: "
              f"{r['uncached_tokens_per_s']:.0f} -> {r['cached_tokens_per_s']:.0f} tokens/s "
              f"= {r['speedup']:.1f}x (same tokens: {r['same_tokens']})")
    b = results["batching"]
    print(f"continuous vs static batching, {b['requests']} requests, {b['max_running']} running:"
          f" {b['continuous']['tokens_per_s']:.0f} vs {b['static']['tokens_per_s']:.0f} tokens/s"
          f" = {b['throughput_ratio']:.2f}x; mean latency {b['continuous']['mean_latency_s']:.2f}"
          f" vs {b['static']['mean_latency_s']:.2f} s = {b['mean_latency_ratio']:.2f}x lower;"
          f" same tokens: {b['same_tokens']}")
    c = b["continuous"]
    print(f"KV memory while the continuous engine ran: paged blocks wasted {c['paged_waste']:.1%}"
          f" of their slots; reserving the whole context per sequence would waste "
          f"{c['reserved_waste']:.1%}")
    print(f"wrote {RESULTS / 'generation.json'}")
    return results


if __name__ == "__main__":
    main()
