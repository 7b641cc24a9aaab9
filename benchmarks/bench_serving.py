"""Serving benchmark: what batching buys, and what the server costs, measured in one run.

For the wafer-map CNN and the note embedder:
  raw       the model alone, called with full batches in a loop: the limit
  batched   the server at saturation (closed loop, many users), dynamic batching on
  unbatched the same server with max_batch_size=1
and the ratios batched/raw (how close the server gets to the limit) and
batched/unbatched (what batching buys). For the HTTP stack: the server answering
a near-trivial model (wafer-mlp) against a bare FastAPI echo app.

    python benchmarks/bench_serving.py [--seconds 8] [--users 64]

Results go to benchmarks/results/serving.json and serving.png. The load generator
runs on the same machine as the server: on a small machine it takes CPU the
server would otherwise use, so read server throughputs as lower bounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from helpers import data, loadgen, models, training  # noqa: E402
from helpers.device import describe, pick_device  # noqa: E402
from helpers.serving import free_port, serve_subprocess, wait_until_ready  # noqa: E402
from helpers.wafermaps import make_wafer_maps  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def raw_throughput(model, batch: np.ndarray, seconds: float) -> float:
    """Items per second calling ``model.predict`` on full batches."""
    model.predict(batch)  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.predict(batch)
        done += len(batch)
    return done / (time.perf_counter() - start)


def server_throughput(url: str, make, users: int, seconds: float) -> dict:
    result = asyncio.run(loadgen.closed_loop(url, make, users=users, duration_s=seconds,
                                             warmup_s=min(2.0, seconds / 4), progress=False))
    summary = result.summary()
    return {"requests_per_s": summary["achieved_rate"], "p99_ms": summary.get("p99_ms"),
            "errors": summary["errors"]}


def v2_maker(model: str, tensors: list[dict]):
    # Encoded once: the generator shares the CPU with the server, so it must not
    # spend it serialising the same JSON again and again.
    bodies = [json.dumps({"inputs": [t]}).encode() for t in tensors]
    return lambda i: loadgen.Request("POST", f"/v2/models/{model}/infer",
                                     content=bodies[i % len(bodies)])


def bench_model(name: str, batch: np.ndarray, tensors: list[dict], args, device) -> dict:
    model = models.load_model(name, device=device)
    raw = raw_throughput(model, batch, args.seconds)
    out = {"model": name, "raw_items_per_s": raw, "max_batch_size": len(batch)}
    for label, flags in [("batched", ["--max-batch-size", str(len(batch)), "--max-wait-ms", "5"]),
                         ("unbatched", ["--max-batch-size", "1", "--max-wait-ms", "0"])]:
        server_args = ["--models", name, "--max-queue", "1024", "--timeout-ms", "60000", *flags]
        with serve_subprocess(*server_args) as server:
            out[label] = server_throughput(server.url, v2_maker(name, tensors), args.users,
                                           args.seconds)
    out["batched_over_raw"] = out["batched"]["requests_per_s"] / raw
    out["batched_over_unbatched"] = (out["batched"]["requests_per_s"]
                                     / out["unbatched"]["requests_per_s"])
    return out


def bench_http_stack(args) -> dict:
    rows = data.feature_matrix(data.make_wafer_records(200, seed=5))
    tensors = [{"name": "process_features", "shape": [1, 8], "datatype": "FP32",
                "data": r.tolist()} for r in rows]
    with serve_subprocess("--models", "wafer-mlp", "--max-wait-ms", "0") as server:
        ours = server_throughput(server.url, v2_maker("wafer-mlp", tensors), args.users,
                                 args.seconds)
    port = free_port()
    echo = subprocess.Popen([sys.executable, "-m", "uvicorn", "benchmarks.echo_app:app",
                             "--port", str(port), "--log-level", "warning"], cwd=ROOT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, 60, alive=lambda: echo.poll() is None)
        bodies = [json.dumps({"inputs": [t]}).encode() for t in tensors]
        bare = server_throughput(url, lambda i: loadgen.Request(
            "POST", "/echo", content=bodies[i % len(bodies)]), args.users, args.seconds)
    finally:
        echo.terminate()
        echo.wait(30)
    return {"server_trivial_model": ours, "bare_fastapi_echo": bare,
            "server_over_echo": ours["requests_per_s"] / bare["requests_per_s"]}


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results["models"]), figsize=(5 * len(results["models"]), 4))
    for ax, r in zip(np.atleast_1d(axes), results["models"], strict=True):
        values = [r["raw_items_per_s"], r["batched"]["requests_per_s"],
                  r["unbatched"]["requests_per_s"]]
        ax.bar(["raw model\n(limit)", "server\nbatched", "server\nunbatched"], values,
               color=["grey", "tab:blue", "tab:orange"])
        ax.set(title=r["model"], ylabel="items / s")
    fig.suptitle(f"Serving throughput on {results['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    parser.add_argument("--users", type=int, default=64, help="closed-loop concurrency")
    args = parser.parse_args(argv)
    training.ensure_wafer_models()
    device = pick_device()

    maps, _ = make_wafer_maps(256, seed=4)
    map_tensors = [{"name": "wafer_map", "shape": [1, 1, 32, 32], "datatype": "FP32",
                    "data": m.ravel().tolist()} for m in maps]
    notes = data.make_engineer_notes(512, seed=4)
    note_tensors = [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [n]}
                    for n in notes]
    results = {"device": describe(device), "seconds": args.seconds, "users": args.users,
               "models": [bench_model("wafer-cnn", maps[:32], map_tensors, args, device),
                          bench_model("note-embedder", np.array(notes[:32], dtype=object),
                                      note_tensors, args, device)],
               "http": bench_http_stack(args)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serving.json").write_text(json.dumps(results, indent=2))
    plot(results, RESULTS / "serving.png")

    print(f"device: {results['device']}")
    for r in results["models"]:
        print(f"{r['model']:14s} raw {r['raw_items_per_s']:8.0f}/s | server batched "
              f"{r['batched']['requests_per_s']:7.0f}/s ({r['batched_over_raw']:.2f} of raw) | "
              f"unbatched {r['unbatched']['requests_per_s']:7.0f}/s | batched/unbatched "
              f"{r['batched_over_unbatched']:.2f}x")
    http = results["http"]
    print(f"HTTP stack: server with wafer-mlp {http['server_trivial_model']['requests_per_s']:.0f}"
          f" req/s vs bare FastAPI echo {http['bare_fastapi_echo']['requests_per_s']:.0f} req/s"
          f" -> {http['server_over_echo']:.2f}")
    print(f"wrote {RESULTS / 'serving.json'} and {RESULTS / 'serving.png'}")
    return results


if __name__ == "__main__":
    main()
