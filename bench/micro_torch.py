"""PyTorch CPU side of the micro-benchmark (bench/micro.c): the same operations and shapes,
timed the same way (median of N runs after a warm-up), so the two tables can be read side by
side. Run with Debian's torch: /usr/bin/python3 bench/micro_torch.py [--reps N] [--threads N].
Attention here is the plain materialised softmax(QK^T)V (torch 1.13 has no fused kernel)."""
import argparse
import resource
import statistics
import time

import torch
import torch.nn.functional as F


def median_time(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []

    def row(name, flops, secs):
        rows.append((name, secs * 1e3, flops / secs / 1e9))

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    row("sgemm 2048^3 (torch.mm)", 2 * 2048**3, median_time(lambda: torch.mm(a, b), args.reps))
    for hw in (32, 64):
        x = torch.randn(1, 320, hw, hw, requires_grad=True)
        w = torch.randn(320, 320, 3, 3, requires_grad=True)
        bias = torch.randn(320, requires_grad=True)
        flops = 2.0 * 320 * 320 * 9 * hw * hw
        row(f"conv3x3 320->320 {hw}x{hw} forward", flops,
            median_time(lambda: F.conv2d(x.detach(), w.detach(), bias.detach(), padding=1), args.reps))
        y = F.conv2d(x, w, bias, padding=1)
        dy = torch.randn_like(y)
        row(f"conv3x3 320->320 {hw}x{hw} backward (dx, dW, db)", 2 * flops,
            median_time(lambda: torch.autograd.grad(y, (x, w, bias), dy, retain_graph=True), args.reps))
    x = torch.randn(4096, 320, requires_grad=True)
    w = torch.randn(320, 320, requires_grad=True)
    bias = torch.randn(320, requires_grad=True)
    lf = 2.0 * 4096 * 320 * 320
    row("linear 4096x320 -> 320 forward", lf, median_time(lambda: F.linear(x.detach(), w.detach(), bias.detach()), args.reps))
    y = F.linear(x, w, bias)
    dy = torch.randn_like(y)
    row("linear 4096x320 -> 320 backward (dx, dW, db)", 2 * lf,
        median_time(lambda: torch.autograd.grad(y, (x, w, bias), dy, retain_graph=True), args.reps))

    T, H, D = 4096, 8, 40
    q, k, v = (torch.randn(1, H, T, D, requires_grad=True) for _ in range(3))

    def attn(q, k, v):
        return torch.softmax(q @ k.transpose(-1, -2) * D**-0.5, dim=-1) @ v

    af = 4.0 * H * T * T * D
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    row("attention 4096 tok, 8 heads x 40, forward", af,
        median_time(lambda: attn(q.detach(), k.detach(), v.detach()), args.reps))
    o = attn(q, k, v)
    do = torch.randn_like(o)
    row("attention 4096 tok, 8 heads x 40, backward", 2.5 * af,
        median_time(lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True), args.reps))
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    print(f"PyTorch {torch.__version__} CPU, {torch.get_num_threads()} threads, median of {args.reps} runs\n")
    print(f"| {'operation':44} | {'ms':>9} | {'GFLOP/s':>8} |")
    print(f"|{'-' * 46}|{'-' * 11}|{'-' * 10}|")
    for name, ms, rate in rows:
        print(f"| {name:44} | {ms:9.2f} | {rate:8.1f} |")
    print(f"\nattention: peak RSS growth {(rss1 - rss0) / 1024:.0f} MB (materialised scores)")


if __name__ == "__main__":
    main()
