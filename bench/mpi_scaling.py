#!/usr/bin/env python3
"""Model of the data-parallel step time against the node count (README "Many machines").

step(N) = A * t_sample + exchange(N, A), with A = micro-batches per node and
exchange = the trainer's exact path (src/train/trainer.c, dp_micro_batches): an allgather of every
micro-batch's gradient (each node receives (N - 1) * A * G bytes; log2(N) latencies) and the sum of
the N * A gradients in micro-batch order on every node (measured by bench_dist_reduce).
Defaults: SD 1.5 at 512 px, one sample 18.99 s (bench/README.md, 2-core node, fp32), G = 1.29 MB
(322,856 shift values), sum 0.30 ms per gradient (bench_dist_reduce, 64 gradients in 19.2 ms).
Prints two markdown tables: 1 sample per node per step (global batch N) and a fixed global batch."""
import argparse
import math

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--sample-s", type=float, default=18.99, help="seconds per sample on one node")
p.add_argument("--grad-mb", type=float, default=1.291, help="gradient of one micro-batch, MB (1e6 bytes)")
p.add_argument("--sum-ms", type=float, default=0.30, help="ms to add one gradient into the sum")
p.add_argument("--global-batch", type=int, default=64)
args = p.parse_args()

# (name, bandwidth GB/s effective, latency s)
NETS = [("10 GbE", 1.1, 30e-6), ("100 Gb InfiniBand", 11.0, 2e-6)]
NODES = [1, 2, 4, 8, 16, 32, 64]


def exchange(n, a, bw, lat):
    if n == 1:
        return a * args.sum_ms * 1e-3 if a > 1 else 0.0
    gather = math.ceil(math.log2(n)) * lat + (n - 1) * a * args.grad_mb * 1e6 / (bw * 1e9)
    return gather + n * a * args.sum_ms * 1e-3


def table(title, micro):
    print(f"\n{title}\n")
    (n1, bw1, l1), (n2, bw2, l2) = NETS
    print(f"| nodes | samples/step | step s ({n1}) | step s ({n2}) | exchange ms ({n1} / {n2}) "
          f"| samples/s ({n1}) | speed-up over 1 node ({n1}) |")
    print("|---" * 7 + "|")
    base = None
    for n in NODES:
        a = micro(n)
        e1, e2 = exchange(n, a, bw1, l1), exchange(n, a, bw2, l2)
        s1, s2 = a * args.sample_s + e1, a * args.sample_s + e2
        rate = n * a / s1
        base = base or rate
        print(f"| {n} | {n * a} | {s1:.2f} | {s2:.2f} | {e1 * 1e3:.1f} / {e2 * 1e3:.1f} | {rate:.3f} | {rate / base:.2f}x |")


table("One sample per node per step (global batch = nodes):", lambda n: 1)
g = args.global_batch
table(f"Global batch {g} per step ({g} / nodes micro-batches per node):", lambda n: g // n)
