#!/usr/bin/env python3
"""Fan-out as a ratio: Dash's /live next to a naive broadcast server, in the same run.

Usage: python3 scripts/bench-fanout.py [--runs 3] [--sockets 1000,10000] [--rates 1,10]

For each socket count and update rate, runs scripts/bench-live.sh once against Dash and once
against the baseline (`dashd ceiling live`: one task per socket fed from a tokio broadcast
channel, each update serialized per socket), alternating, --runs times, and prints per server
the median deliveries/s, delivery latency p50/p99 and the server's CPU per delivery, then the
ratios. One update per second is a 1 s flush with 20 POSTs/s; ten per second a 100 ms flush
with 20 POSTs/s (each flush then holds two POSTs: one update). Loopback only; each run is
bounded (~25 s).
"""

import argparse
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def one_run(server, sockets, rate):
    flush = "1s" if rate == 1 else f"{1000 // rate}ms"
    env = dict(os.environ, SERVER=server)
    out = subprocess.run(
        ["bash", os.path.join(HERE, "bench-live.sh"), str(sockets), flush, "20"],
        env=env, capture_output=True, text=True, timeout=300,
    ).stdout
    deliveries = re.search(r"deliveries (\d+) over the (\d+) s load", out)
    latency = re.search(r"p50 ([\d.]+) ms\s+p99 ([\d.]+) ms", out)
    cpu = re.search(r"CPU over the load window: server (\d+) ms", out)
    failed = re.search(r"sockets \d+ \(failed (\d+)\)", out)
    if not (deliveries and latency and cpu):
        sys.exit(f"{server} {sockets} sockets {rate}/s: unreadable output:\n{out}")
    count, secs = int(deliveries.group(1)), int(deliveries.group(2))
    return {
        "deliveries_s": count / secs,
        "p50": float(latency.group(1)),
        "p99": float(latency.group(2)),
        "cpu_us": int(cpu.group(1)) * 1000 / max(count, 1),
        "failed": int(failed.group(1)) if failed else 0,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sockets", default="1000,10000")
    parser.add_argument("--rates", default="1,10")
    args = parser.parse_args()
    print("| sockets | updates/s asked | server | updates/s seen | deliveries/s | p50 / p99 ms (p99 of each run) | server CPU per delivery (each run) | failed sockets |")
    print("|---|---|---|---|---|---|---|---|")
    ratios = []
    for sockets in [int(s) for s in args.sockets.split(",")]:
        for rate in [int(r) for r in args.rates.split(",")]:
            runs = {"dash": [], "naive": []}
            for _ in range(args.runs):
                for server in ("dash", "naive"):
                    runs[server].append(one_run(server, sockets, rate))
            medians = {}
            for server, results in runs.items():
                med = {k: statistics.median(r[k] for r in results) for k in results[0]}
                medians[server] = med
                cpu_runs = ", ".join(f"{r['cpu_us']:.1f}" for r in results)
                p99_runs = ", ".join(f"{r['p99']:.0f}" for r in results)
                print(
                    f"| {sockets:,} | {rate} | {server} | {med['deliveries_s'] / sockets:.1f} | {med['deliveries_s']:,.0f} | "
                    f"{med['p50']:.1f} / {med['p99']:.1f} ({p99_runs}) | {med['cpu_us']:.2f} µs ({cpu_runs}) | "
                    f"{max(r['failed'] for r in results)} |",
                    flush=True,
                )
            d, n = medians["dash"], medians["naive"]
            ratios.append(
                f"{sockets:,} sockets, {rate}/s: Dash's CPU per delivery {d['cpu_us'] / n['cpu_us']:.2f}× the "
                f"baseline's, p99 {d['p99']:.1f} vs {n['p99']:.1f} ms"
            )
    print()
    for line in ratios:
        print(line)


if __name__ == "__main__":
    main()
