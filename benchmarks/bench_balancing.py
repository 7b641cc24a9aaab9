"""Load balancing benchmarks for lesson 06: three real replicas on loopback, one run each.

    python benchmarks/bench_balancing.py      # also part of `make bench`

Three ``python -m helpers.server`` replicas serve ``wafer-mlp`` (one worker, one torch
thread each); an open loop sends single records at a fixed rate through ``Balancer``:

- **A slow replica**: one replica restarted with ``--fault-delay-ms`` (fault injection: each
  row sleeps, as on a busy host). p50, p99 and each replica's share of traffic under round
  robin, random, least outstanding, power of two choices and P2C over peak EWMA.
- **A killed replica**: SIGKILL one replica a third of the way into the run; errors and
  retries without ejection or retries, then with ejection and a retry budget.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from helpers import data, training  # noqa: E402
from helpers.balancer import (  # noqa: E402
    LeastOutstanding,
    OutlierDetector,
    PeakEwmaP2C,
    PowerOfTwo,
    RandomPick,
    RetryBudget,
    RoundRobin,
    drive,
)
from helpers.loadgen import v2_request  # noqa: E402
from helpers.replicas import ReplicaSet  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
REPLICA_ARGS = ("--models", "wafer-mlp", "--workers", "1", "--torch-threads", "1")
RATE_PER_S, SECONDS, SLOW_MS = 150, 8.0, 20


def run(urls, picker, make, *, seconds=SECONDS, faults=(), **balancer_args) -> dict:
    """One open-loop run through a fresh balancer; ``faults``: ``(at_s, action)`` pairs."""
    measured = asyncio.run(drive(urls, picker, make, rate_per_s=RATE_PER_S, seconds=seconds,
                                 warmup_s=1.0, faults=faults, timeout_s=10, **balancer_args))
    summary, stats = measured.summary(), measured.balancer.stats()
    return {"p50_ms": summary["p50 ms"], "p99_ms": summary["p99 ms"],
            "requests": summary["requests"], "errors": summary["errors"],
            "retries": summary["retries"], "attempts": int(stats["attempts"].sum()),
            "share": [round(s, 3) for s in stats["share"]],
            "ejections": int(stats["ejections"].sum())}


def main() -> dict:
    training.ensure_wafer_models()
    make = v2_request("wafer-mlp", data.feature_matrix(data.make_wafer_records(512, seed=5)))
    results: dict = {"rate_per_s": RATE_PER_S, "seconds": SECONDS, "slow_ms_per_row": SLOW_MS}
    with ReplicaSet(3, *REPLICA_ARGS) as replicas:
        results["replicas"] = replicas.table()[["start-up s", "RSS MB"]].to_dict("index")
        replicas.restart(2, "--fault-delay-ms", str(SLOW_MS))
        pickers = {"round robin": RoundRobin(), "random": RandomPick(random.Random(0)),
                   "least outstanding": LeastOutstanding(random.Random(0)),
                   "power of two": PowerOfTwo(random.Random(0)),
                   "P2C + peak EWMA": PeakEwmaP2C(random.Random(0))}
        results["slow replica"] = {name: run(replicas.urls, picker, make, tau_s=1.0)
                                   for name, picker in pickers.items()}
        replicas.restart(2)  # fast again

        killed = {}
        for label, guards in [("no ejection, no retries", {}),
                              ("ejection + retry budget", {
                                  "detector": OutlierDetector(consecutive_failures=3, eject_s=2),
                                  "budget": RetryBudget(ratio=0.1, min_retries=5)})]:
            if not replicas[2].alive:
                replicas.restart(2)
            killed[label] = run(replicas.urls, PowerOfTwo(random.Random(0)), make,
                                faults=[(SECONDS / 3, lambda: replicas.kill(2))], **guards)
        results["killed replica"] = killed

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "balancing.json").write_text(json.dumps(results, indent=2))
    print(f"3 replicas of wafer-mlp, {RATE_PER_S} requests/s for {SECONDS:g} s, replica 2 "
          f"slowed by {SLOW_MS} ms per row:")
    slow = results["slow replica"]
    for name, r in slow.items():
        print(f"  {name:18s} p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
              f"shares {r['share']}  errors {r['errors']}")
    best = min(slow["least outstanding"]["p99_ms"], slow["P2C + peak EWMA"]["p99_ms"])
    ratio = best / slow["round robin"]["p99_ms"]
    print(f"  best of least outstanding and P2C + EWMA: p99 {ratio:.2f} x round robin's "
          "(target <= 0.5)")
    print("replica 2 killed a third of the way in (power of two choices):")
    for label, r in results["killed replica"].items():
        print(f"  {label:24s} errors {r['errors']}/{r['requests']} "
              f"({r['errors'] / r['requests']:.1%}), retries {r['retries']} "
              f"({r['retries'] / r['requests']:.1%} of requests), ejections {r['ejections']}")
    print(f"wrote {RESULTS / 'balancing.json'}")
    return results


if __name__ == "__main__":
    main()
