#!/usr/bin/env python3
"""The summary table that opens BENCHMARKS.md, from one `lateral-bench --json FILE` run.

Per scenario: lateral's p99 and success beside the best peer's (the lowest p99 of p2c_peak_ewma, envoy_cswrr
and envoy_least_request) and ideal's, and the ratios the "Win the tail" targets are stated in. Success is
counted from one second after the scenario's first event when it has one (the after-fault column of the
tables). A row whose generator fell behind (send-lag p99 over 5 ms) is marked; its latency measures the
machine, not the policy.

usage: python3 examples/scripts/bench-summary.py bench.json
"""
import json
import sys

PEERS = ["p2c_peak_ewma", "envoy_cswrr", "envoy_least_request"]


def success(run):
    after = run.get("success_after_fault")
    if after and after.get("requests"):
        return 100.0 * after["ok"] / after["requests"]
    return 100.0 * run["ok"] / max(run["requests"], 1)


def flag(run):
    return " (saturated)" if run.get("harness_saturated") else ""


def main(path):
    runs = json.load(open(path))
    scenarios = []
    by = {}
    for r in runs:
        if r["scenario"] not in by:
            scenarios.append(r["scenario"])
        by.setdefault(r["scenario"], {})[r["policy"]] = r
    print("| scenario | lateral p99 ms | lateral success % | best peer | peer p99 ms | peer success % "
          "| ideal p99 ms | lateral / ideal | lateral / best peer | weight overshoot (points) |")
    print("|---|--:|--:|---|--:|--:|--:|--:|--:|--:|")
    for s in scenarios:
        p = by[s]
        lat = p.get("lateral")
        if lat is None:
            continue
        peers = [p[n] for n in PEERS if n in p]
        best = min(peers, key=lambda r: r["p99_ms"]) if peers else None
        ideal = p.get("ideal")
        over = lat.get("overshoot_points")
        cells = [
            s,
            f"{lat['p99_ms']:.1f}{flag(lat)}",
            f"{success(lat):.2f}",
            best["policy"] if best else "—",
            f"{best['p99_ms']:.1f}{flag(best)}" if best else "—",
            f"{success(best):.2f}" if best else "—",
            f"{ideal['p99_ms']:.1f}{flag(ideal)}" if ideal else "—",
            f"{lat['p99_ms'] / ideal['p99_ms']:.2f}" if ideal else "—",
            f"{lat['p99_ms'] / best['p99_ms']:.2f}" if best else "—",
            f"{over:.1f}" if over is not None else "—",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
