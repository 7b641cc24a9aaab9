"""Serving benchmark: what batching buys, and what the server costs, measured in one run.

For the wafer-map CNN and the note embedder, in items (maps, notes) per second:
  raw        the model alone, called with full batches in a loop: the limit
  in-process the server's own batcher (the registry's, same policy, workers and
             buckets) driven by as many asyncio users in this process: no HTTP, so
             the gap to raw is batching's cost and the gap to the server is HTTP's
  batched    the server at saturation (closed loop, many users), dynamic batching on,
             one item per request
  unbatched  the same server with max_batch_size=1
and for the CNN also
  json       one map per request as JSON numbers instead of binary tensors
  lots       a wafer lot (25 maps) per request, binary: the per-request cost of HTTP
             shared by 25 maps, as a fab's inspection tool would send them
and for the embedder also
  buckets    batched within token-length buckets (<=8, <=16, ... <=128, longer)
with the ratios of each to raw (how close the server gets to the limit) and
batched/unbatched (what batching buys). A shared machine's speed drifts by 10-20 %
over minutes, so the limit is measured again (for half as long) just before every
scenario, and each ratio is taken against that paired limit; the spread of the
limit over the run is reported beside it. For the HTTP stack: the server answering a
near-trivial model (wafer-mlp) against a bare FastAPI echo app.

    python benchmarks/bench_serving.py [--seconds 8] [--users 64] [--workers 2]

The server runs ``--workers`` model threads with the cores shared among them
(``--torch-threads`` left to its default), and the raw limit is measured with as
many threads calling the model, so both use the same configuration.

Results go to benchmarks/results/serving.json and serving.png. The load generator
runs on the same machine as the server: on a small machine it takes CPU the
server would otherwise use, so read server throughputs as lower bounds. Each
line reports the cores the server process and the generator used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from helpers import data, loadgen, models, training  # noqa: E402
from helpers.device import describe, pick_device, threads_per_worker, usable_cores  # noqa: E402
from helpers.metrics import ServingMetrics  # noqa: E402
from helpers.protocol import encode_binary_request  # noqa: E402
from helpers.registry import ModelRegistry  # noqa: E402
from helpers.server import ServerSettings  # noqa: E402
from helpers.serving import free_port, serve_subprocess, wait_until_ready  # noqa: E402
from helpers.wafermaps import make_wafer_maps  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
LOT = 25  # wafers per lot: what an inspection tool sends at once


def raw_throughput(model, batches: list[np.ndarray], seconds: float, workers: int) -> float:
    """Items per second with ``workers`` threads calling ``model.predict`` on full batches.

    The threads share the cores as the server's workers do (``threads_per_worker``),
    so the limit and the server are measured in the same configuration.
    """
    torch.set_num_threads(threads_per_worker(workers))
    model.predict(batches[0])  # warm-up
    done = [0] * workers
    start = time.perf_counter()

    def loop(worker: int) -> None:
        calls = worker
        while time.perf_counter() - start < seconds or calls < len(batches):  # each batch once
            batch = batches[calls % len(batches)]
            model.predict(batch)
            done[worker] += len(batch)
            calls += workers

    threads = [threading.Thread(target=loop, args=(w,)) for w in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.perf_counter() - start)


def server_throughput(url: str, server_pid: int, requests: list[loadgen.Request],
                      items_per_request: int, users: int, seconds: float) -> dict:
    """Closed loop at saturation: items/s, and the cores the server and the generator used."""
    def cpu_seconds(process: psutil.Process) -> float:
        times = process.cpu_times()
        return times.user + times.system

    server, client = psutil.Process(server_pid), psutil.Process()
    server_before, client_before, start = cpu_seconds(server), cpu_seconds(client), \
        time.perf_counter()
    result = asyncio.run(loadgen.closed_loop(
        url, lambda i: requests[i % len(requests)], users=users, duration_s=seconds,
        warmup_s=min(2.0, seconds / 4), progress=False))
    elapsed = time.perf_counter() - start
    summary = result.summary()
    return {"items_per_s": summary["achieved_rate"] * items_per_request,
            "requests_per_s": summary["achieved_rate"], "p99_ms": summary.get("p99_ms"),
            "errors": summary["errors"],
            "server_cores": round((cpu_seconds(server) - server_before) / elapsed, 2),
            "client_cores": round((cpu_seconds(client) - client_before) / elapsed, 2)}


def json_requests(model: str, tensors: list[dict]) -> list[loadgen.Request]:
    # Encoded once: the generator shares the CPU with the server, so it must not
    # spend it serialising the same JSON again and again.
    return [loadgen.Request("POST", f"/v2/models/{model}/infer",
                            content=json.dumps({"inputs": [t]}).encode()) for t in tensors]


def binary_requests(model: str, input_name: str, arrays: list[np.ndarray]
                    ) -> list[loadgen.Request]:
    requests = []
    for array in arrays:
        body, headers = encode_binary_request({input_name: array})
        requests.append(loadgen.Request("POST", f"/v2/models/{model}/infer", content=body,
                                        headers=headers))
    return requests


def batcher_throughput(model, rows: list[np.ndarray], flags: list[str], users: int,
                       seconds: float) -> dict:
    """Closed loop on the server's batcher in this process: no HTTP, no generator.

    The batcher is the one a server started with ``flags`` builds (its
    ``ModelRegistry``, from ``ServerSettings.from_flags``), and each request's rows
    go through ``registry.work`` (the embedder tokenises there, on the event loop,
    as in the server).
    """
    settings = ServerSettings.from_flags(flags)

    async def drive() -> float:
        registry = ModelRegistry(None, settings.batch_policy(), max_queue=settings.max_queue,
                                 workers=settings.model_workers(), metrics=ServingMetrics(),
                                 buckets=settings.buckets)
        served = await registry.add(model)
        done, warm_until = 0, time.perf_counter() + min(2.0, seconds / 4)
        stop = warm_until + seconds

        async def user(first: int) -> None:
            nonlocal done
            i = first
            while time.perf_counter() < stop:
                request = rows[i % len(rows)]
                await served.batcher.submit(registry.work(model, request))
                if time.perf_counter() > warm_until:
                    done += len(request)
                i += users

        try:
            await asyncio.gather(*(user(u) for u in range(users)))
        finally:
            await registry.close()
        return done / (time.perf_counter() - warm_until)

    return {"items_per_s": asyncio.run(drive())}


def bench_model(name: str, batches: list[np.ndarray], scenarios: dict, args, device,
                in_process: tuple[list[np.ndarray], list[str]]) -> dict:
    """``batches`` give the raw limit; ``scenarios``: label -> (server flags, requests,
    items per request, users); ``in_process``: (each request's rows, batcher flags)."""
    model = models.load_model(name, device=device)
    raw = raw_throughput(model, batches, args.seconds, args.workers)
    out = {"model": name, "raw_items_per_s": raw, "max_batch_size": len(batches[0]),
           "workers": args.workers, "torch_threads": threads_per_worker(args.workers)}
    if args.workers > 1:  # what the worker configuration buys over one worker with every core
        out["raw_one_worker_items_per_s"] = raw_throughput(model, batches, args.seconds, 1)

    def paired_limit() -> float:
        # the machine drifts: each scenario is compared with the limit measured just before
        return raw_throughput(model, batches, args.seconds / 2, args.workers)

    common = ["--max-queue", "1024", "--timeout-ms", "60000", "--workers", str(args.workers)]
    limits = [raw]
    rows, flags = in_process
    limits.append(paired_limit())
    out["in_process"] = batcher_throughput(model, rows, [*common, *flags], args.users,
                                           args.seconds)
    out["in_process"].update(paired_raw_items_per_s=limits[-1],
                             over_raw=out["in_process"]["items_per_s"] / limits[-1])
    for label, (flags, requests, items, users) in scenarios.items():
        limits.append(paired_limit())
        with serve_subprocess("--models", name, *common, *flags) as server:
            out[label] = server_throughput(server.url, server.process.pid, requests, items,
                                           users, args.seconds)
        out[label].update(paired_raw_items_per_s=limits[-1],
                          over_raw=out[label]["items_per_s"] / limits[-1])
    out["raw_spread"] = [min(limits), max(limits)]
    out["batched_over_unbatched"] = out["batched"]["items_per_s"] / out["unbatched"]["items_per_s"]
    return out


def batching(max_batch_size: int) -> list[str]:
    return ["--max-batch-size", str(max_batch_size), "--max-wait-ms", "5"]


UNBATCHED = ["--max-batch-size", "1", "--max-wait-ms", "0"]


def bench_cnn(args, device) -> dict:
    maps, _ = make_wafer_maps(256, seed=4)
    single = binary_requests("wafer-cnn", "wafer_map", [m[None] for m in maps])
    as_json = json_requests("wafer-cnn", [
        {"name": "wafer_map", "shape": [1, 1, 32, 32], "datatype": "FP32",
         "data": m.ravel().tolist()} for m in maps])
    lots = binary_requests("wafer-cnn", "wafer_map",
                           [maps[i:i + LOT] for i in range(0, len(maps) - LOT + 1, LOT)])
    batch = 32
    in_process = ([m[None] for m in maps], batching(batch))
    return bench_model("wafer-cnn", [maps[:batch]], {
        "batched": (batching(batch), single, 1, args.users),
        "unbatched": (UNBATCHED, single, 1, args.users),
        "json": (batching(batch), as_json, 1, args.users),
        # two lots per model call at most; a few users keep the model busy
        "lots": (batching(2 * LOT), lots, LOT, 8),
    }, args, device, in_process)


def bench_embedder(args, device) -> dict:
    notes = data.make_engineer_notes(512, seed=4)
    single = json_requests("note-embedder", [
        {"name": "text", "shape": [1], "datatype": "BYTES", "data": [n]} for n in notes])
    # The limit: batches of notes of similar length, so that padding wastes little
    # (a mixed batch pads every note to the longest and understates the model).
    by_length = np.array(sorted(notes, key=len), dtype=object)
    batch = 32
    batches = [by_length[i:i + batch] for i in range(0, len(by_length) - batch + 1, batch)]
    bucketed = batching(batch) + ["--buckets", "8,16,32,64,128"]
    in_process = ([np.array([n], dtype=object) for n in notes], bucketed)
    return bench_model("note-embedder", batches, {
        "batched": (batching(batch), single, 1, args.users),
        "buckets": (bucketed, single, 1, args.users),
        "unbatched": (UNBATCHED, single, 1, args.users),
    }, args, device, in_process)


def bench_http_stack(args) -> dict:
    rows = data.feature_matrix(data.make_wafer_records(200, seed=5))
    make = loadgen.v2_request("wafer-mlp", rows)  # bodies encoded once
    requests = [make(i) for i in range(len(rows))]
    with serve_subprocess("--models", "wafer-mlp", "--max-wait-ms", "0") as server:
        ours = server_throughput(server.url, server.process.pid, requests, 1, args.users,
                                 args.seconds)
    port = free_port()
    echo = subprocess.Popen([sys.executable, "-m", "uvicorn", "benchmarks.echo_app:app",
                             "--port", str(port), "--log-level", "warning"], cwd=ROOT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, 60, alive=lambda: echo.poll() is None)
        echoes = [loadgen.Request("POST", "/echo", content=r.content) for r in requests]
        bare = server_throughput(url, echo.pid, echoes, 1, args.users, args.seconds)
    finally:
        echo.terminate()
        echo.wait(30)
    return {"server_trivial_model": ours, "bare_fastapi_echo": bare,
            "server_over_echo": ours["requests_per_s"] / bare["requests_per_s"]}


SCENARIOS = {"in_process": "in-process\n(no HTTP)", "batched": "server\nbatched",
             "unbatched": "server\nunbatched",
             "json": "batched,\nJSON maps", "lots": f"batched,\n{LOT}-map lots",
             "buckets": "batched by\nlength bucket"}


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results["models"]), figsize=(6 * len(results["models"]), 4))
    for ax, r in zip(np.atleast_1d(axes), results["models"], strict=True):
        labels = [s for s in SCENARIOS if s in r]
        names = ["raw model\n(limit)"] + [SCENARIOS[s] for s in labels]
        ax.bar(names, [r["raw_items_per_s"]] + [r[s]["items_per_s"] for s in labels],
               color=["grey"] + [f"C{i}" for i in range(len(labels))])
        ax.scatter(names[1:], [r[s]["paired_raw_items_per_s"] for s in labels], marker="_",
                   s=900, color="black", label="limit measured just before")
        ax.set(title=r["model"], ylabel="items / s")
        ax.set_ylim(top=1.25 * max([r["raw_items_per_s"]] + [r[s]["paired_raw_items_per_s"]
                                                              for s in labels]))
        ax.tick_params(axis="x", labelsize=8)
        ax.legend(loc="upper right", fontsize=8, markerscale=0.3)
    fig.suptitle(f"Serving throughput on {results['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    parser.add_argument("--users", type=int, default=64, help="closed-loop concurrency")
    parser.add_argument("--workers", type=int, default=min(2, usable_cores()),
                        help="model threads in the server and in the raw measurement")
    args = parser.parse_args(argv)
    training.ensure_wafer_models()
    device = pick_device()
    results = {"device": describe(device), "cpu_count": usable_cores(),
               "seconds": args.seconds, "users": args.users,
               "models": [bench_cnn(args, device), bench_embedder(args, device)],
               "http": bench_http_stack(args)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serving.json").write_text(json.dumps(results, indent=2))
    plot(results, RESULTS / "serving.png")

    print(f"device: {results['device']}, {results['cpu_count']} CPUs")
    for r in results["models"]:
        low, high = r["raw_spread"]
        print(f"{r['model']}: raw {r['raw_items_per_s']:.0f}/s (batches of "
              f"{r['max_batch_size']}, {r['workers']} workers x {r['torch_threads']} torch "
              f"threads; {low:.0f}-{high:.0f}/s over the run); batched/unbatched "
              f"{r['batched_over_unbatched']:.2f}x")
        if "raw_one_worker_items_per_s" in r:
            print(f"  raw with one worker of {threads_per_worker(1)} threads: "
                  f"{r['raw_one_worker_items_per_s']:.0f}/s")
        for label in SCENARIOS:
            if label not in r:
                continue
            s = r[label]
            line = (f"  {SCENARIOS[label].replace(chr(10), ' '):29s} {s['items_per_s']:7.0f}/s "
                    f"= {s['over_raw']:.2f} of raw ({s['paired_raw_items_per_s']:.0f}/s "
                    f"just before)")
            if "p99_ms" in s:
                line += (f"  p99 {s['p99_ms']:.0f} ms; cores: server {s['server_cores']:.2f}, "
                         f"generator {s['client_cores']:.2f}; errors {s['errors'] or 0}")
            print(line)
    http = results["http"]
    print(f"HTTP stack: server with wafer-mlp {http['server_trivial_model']['requests_per_s']:.0f}"
          f" req/s vs bare FastAPI echo {http['bare_fastapi_echo']['requests_per_s']:.0f} req/s"
          f" -> {http['server_over_echo']:.2f}")
    print(f"wrote {RESULTS / 'serving.json'} and {RESULTS / 'serving.png'}")
    return results


if __name__ == "__main__":
    main()
