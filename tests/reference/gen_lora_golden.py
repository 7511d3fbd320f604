"""Golden tensors for the LoRA adapters (src/weights/lora.c, tests/test_lora.c): a linear and a
conv (3x3, stride 2, padding 1) with a frozen base W plus s * B A, written from scratch in
PyTorch as peft's LoraLayer computes them (y = base(x) + s * lora_B(lora_A(x))): the outputs,
the gradients of A, B and x for the loss sum(out * probe), the merged weight W + s B A, and
peft's kaiming-uniform bound of A (a = sqrt(5): 1 / sqrt(fan_in))."""
import argparse
import math

import torch
import torch.nn.functional as F

from st_io import write_raw


def f32(name, t):
    t = t.detach().to(torch.float32).contiguous()
    return (name, "F32", list(t.shape), t.numpy().tobytes())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.manual_seed(7)
    ent = []
    # linear: N=5 tokens, in 6, out 4, rank 3, alpha 6 -> s = 2
    N, I, O, R, alpha = 5, 6, 4, 3, 6.0
    s = alpha / R
    W, b = torch.randn(O, I), torch.randn(O)
    A = torch.randn(R, I, requires_grad=True)
    B = torch.randn(O, R, requires_grad=True)
    x = torch.randn(N, I, requires_grad=True)
    probe = torch.randn(N, O)
    out = F.linear(x, W, b) + s * F.linear(F.linear(x, A), B)
    (out * probe).sum().backward()
    for k, v in [("W", W), ("b", b), ("A", A), ("B", B), ("x", x), ("probe", probe), ("out", out),
                 ("dA", A.grad), ("dB", B.grad), ("dx", x.grad), ("merged", W + s * B @ A)]:
        ent.append(f32("linear." + k, v))
    # conv: batch 2, in 3, 7x6 image, out 5, 3x3 kernel, stride 2, padding 1, rank 2, alpha 1
    Bn, C, H, Wd, OC, K, R2, alpha2 = 2, 3, 7, 6, 5, 3, 2, 1.0
    s2 = alpha2 / R2
    Wc, bc = torch.randn(OC, C, K, K), torch.randn(OC)
    Ac = torch.randn(R2, C, K, K, requires_grad=True)
    Bc = torch.randn(OC, R2, 1, 1, requires_grad=True)
    xc = torch.randn(Bn, C, H, Wd, requires_grad=True)
    outc = F.conv2d(xc, Wc, bc, stride=2, padding=1) + s2 * F.conv2d(F.conv2d(xc, Ac, stride=2, padding=1), Bc)
    probec = torch.randn_like(outc)
    (outc * probec).sum().backward()
    mergedc = Wc.reshape(OC, -1) + s2 * Bc.reshape(OC, R2) @ Ac.reshape(R2, -1)
    for k, v in [("W", Wc), ("b", bc), ("A", Ac), ("B", Bc), ("x", xc), ("probe", probec), ("out", outc),
                 ("dA", Ac.grad), ("dB", Bc.grad), ("dx", xc.grad), ("merged", mergedc)]:
        ent.append(f32("conv." + k, v))
    # peft: nn.init.kaiming_uniform_(lora_A.weight, a=math.sqrt(5)) on [R, C, K, K]
    probe_a = torch.empty(R2, C, K, K)
    torch.nn.init.kaiming_uniform_(probe_a, a=math.sqrt(5))
    gain = math.sqrt(2.0 / (1 + 5))
    bound = gain * math.sqrt(3.0 / (C * K * K))
    assert probe_a.abs().max().item() <= bound + 1e-7
    ent.append(f32("conv.kaiming_bound", torch.tensor([bound])))
    write_raw(a.out, ent, {"scale_linear": str(s), "scale_conv": str(s2)})


if __name__ == "__main__":
    main()
