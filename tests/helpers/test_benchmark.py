"""The benchmark's in-process scenario drives the server's own batcher, as configured."""

import sys
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS.parent / "benchmarks"))
import bench_serving as bench  # noqa: E402
from serving_fixtures import SlowModel  # noqa: E402


class LengthModel(SlowModel):
    """Rows are token lists (after ``prepare``); answers each row's length."""

    def __init__(self):
        super().__init__("lengths", delay_s=0.01)

    def prepare(self, texts):
        rows = np.empty(len(texts), dtype=object)
        rows[:] = [list(range(len(str(t).split()))) for t in texts]
        return rows

    def predict(self, rows):
        self.release.wait(30)
        self.calls.append([len(r) for r in rows])
        return np.array([len(r) for r in rows], dtype=np.float32)


def test_in_process_scenario_batches_with_the_flags_policy():
    model = SlowModel(delay_s=0.01)
    rows = [np.full((1, 8), i, np.float32) for i in range(16)]
    result = bench.batcher_throughput(model, rows, ["--max-batch-size", "4", "--max-wait-ms",
                                                    "5"], users=16, seconds=0.3)
    assert result["items_per_s"] > 0
    assert max(model.calls) == 4  # 16 users queue up; the policy cuts batches of 4
    assert min(model.calls) >= 1


def test_in_process_scenario_prepares_rows_and_keeps_buckets_apart():
    model = LengthModel()
    texts = ["a b", "a b c d e f g h i j", "a", "a b c d e f g h i j k l"]
    rows = [np.array([t], dtype=object) for t in texts]
    bench.batcher_throughput(model, rows, ["--max-batch-size", "8", "--max-wait-ms", "5",
                                           "--buckets", "4"], users=8, seconds=0.3)
    assert model.calls, "the model was never called"
    for lengths in model.calls:  # tokenised by prepare, and never <=4 mixed with >4
        assert all(n <= 4 for n in lengths) or all(n > 4 for n in lengths), lengths
    assert any(len(lengths) > 1 for lengths in model.calls)


def test_the_generation_benchmark_compares_like_with_like():
    import bench_generation as gen
    import torch

    from helpers.gpt import ToolLogGPT, ToolLogTokenizer

    torch.manual_seed(0)
    model = ToolLogGPT(ToolLogTokenizer().vocab_size).eval()
    cache = gen.kv_cache_speedup(model, new_tokens=30, batch=2)
    assert cache["same_tokens"] and cache["speedup"] > 0
    batching = gen.batching_comparison(model, n_requests=6, max_running=3)
    assert batching["same_tokens"]
    assert set(batching) >= {"static", "continuous", "throughput_ratio", "mean_latency_ratio"}
    continuous = batching["continuous"]
    assert 0 <= continuous["paged_waste"] < continuous["reserved_waste"] < 1


def test_the_balancing_benchmark_counts_errors_and_retries_around_a_dead_replica():
    import bench_balancing as lb

    from helpers.balancer import OutlierDetector, RetryBudget, RoundRobin
    from helpers.loadgen import v2_request
    from helpers.server import ServerSettings, create_app
    from helpers.serving import free_port, serve_in_thread

    app = create_app(ServerSettings(repository=Path("/nonexistent")),
                     models=[SlowModel("wafer-mlp", delay_s=0)])
    make = v2_request("wafer-mlp", np.zeros((4, 8), np.float32))
    with serve_in_thread(app) as url:
        urls = [url, f"http://127.0.0.1:{free_port()}"]  # nothing listens on the second
        bare = lb.run(urls, RoundRobin(), make, seconds=1.5)
        guarded = lb.run(urls, RoundRobin(), make, seconds=1.5,
                         detector=OutlierDetector(consecutive_failures=2, eject_s=10),
                         budget=RetryBudget(ratio=0.1, min_retries=3))
    assert bare["errors"] > 0.3 * bare["requests"] and bare["retries"] == 0
    assert guarded["errors"] == 0 and guarded["ejections"] == 1
    assert 0 < guarded["retries"] <= 3 + 0.1 * guarded["attempts"]
    assert guarded["share"][1] < 0.05  # the dead one got its two failures, then nothing
