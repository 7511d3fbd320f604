#!/usr/bin/python3
"""Golden data for tests/test_diffusion.c: noise schedules, timesteps, sigma tables, DDPM
noising, the RNG stream, and whole sampling trajectories of DDIM (eta 0 and 0.5), DDIM
inversion, Euler, Euler ancestral and DPM-Solver++ 2M, with epsilon and v prediction.

Run with Debian's torch (/usr/bin/python3); tests/reference/regenerate.sh is the one command.
Arithmetic is diffusers': every scheduler is re-implemented below from the diffusers sources
(src/diffusers/schedulers/scheduling_ddim.py, scheduling_ddim_inverse.py,
scheduling_euler_discrete.py, scheduling_euler_ancestral_discrete.py,
scheduling_dpmsolver_multistep.py) in FLOAT32 torch tensors for the schedule and the steps,
and numpy float64 for the timestep / sigma set-up, exactly as diffusers computes them (diffusers
is not installed here). The C side must match timesteps, sigmas and alphas_cumprod bit for bit
and each trajectory step to 1e-4 relative.

The "model" is analytic, so that C and Python evaluate the same function:
    model(x, t) = tanh(0.5 x + sin(t / 100))           (+ 0.3 inside tanh for the cond rows
                                                        of a classifier-free guidance batch)
Noise (initial latents, DDIM eta noise, Euler ancestral noise) comes from svdiff's RNG
(Philox4x32-10 + Box-Muller, src/diffusion/diffusion.h), implemented independently below: the
C driver, seeded the same, must draw the same numbers in the same order (initial latents, then
one tensor per step).

Departure from diffusers, also in the C code: trailing spacing takes the first N values of
numpy's arange(T, 0, -T/N), which for some N (61, 103, ...) has N+1 values (diffusers would
then take an extra step at timestep -1).
"""
import argparse
import math
import os
import struct
import sys

import numpy as np
import torch

import st_io  # noqa: E402  (tests/reference/st_io.py)

torch.set_num_threads(1)  # same bytes on every run
F32 = torch.float32
TENSORS = {}  # name -> tensor (stored as F32), insertion order

# ---------------------------------------------------------------------------------------------
# RNG: Philox4x32-10 (Random123) in counter mode, Box-Muller in double, one normal per block.

MASK32 = 0xFFFFFFFF


def philox4x32_10(ctr, key):
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for rnd in range(10):
        if rnd:
            k0 = (k0 + 0x9E3779B9) & MASK32
            k1 = (k1 + 0xBB67AE85) & MASK32
        p0 = 0xD2511F53 * c0
        p1 = 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0) & MASK32, p1 & MASK32, ((p0 >> 32) ^ c3 ^ k1) & MASK32, p0 & MASK32
    return c0, c1, c2, c3


# Random123's kat_vectors for philox4x32 10.
assert philox4x32_10((0, 0, 0, 0), (0, 0)) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
assert philox4x32_10((MASK32,) * 4, (MASK32,) * 2) == (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)
assert philox4x32_10((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)) == \
    (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)


def normal_at(seed, index):
    x = philox4x32_10((index & MASK32, (index >> 32) & MASK32, 0, 0), (seed & MASK32, (seed >> 32) & MASK32))
    a = x[0] | (x[1] << 32)
    b = x[2] | (x[3] << 32)
    u1 = ((a >> 11) + 0.5) * 2.0 ** -53
    u2 = (b >> 11) * 2.0 ** -53
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(6.283185307179586 * u2)


class Rng:
    def __init__(self, seed):
        self.seed, self.counter = seed, 0

    def normal(self, shape):
        n = int(np.prod(shape))
        vals = [normal_at(self.seed, self.counter + i) for i in range(n)]
        self.counter += n
        return torch.tensor(vals, dtype=torch.float64).to(F32).reshape(shape)


# ---------------------------------------------------------------------------------------------
# Schedule (the __init__ shared by the five scheduler classes).

def torch_cpu_linspace_avx2(start, end, steps):
    """torch.linspace(start, end, steps, dtype=float32) as PyTorch's CPU AVX2 kernel computes it
    (RangeFactoriesKernel.cpp compiled with FMA contraction): 8-lane vectors two at a time, the
    rest scalar; the first half counts up from start, the second down from end; a vector's base
    and each scalar element are fused multiply-adds, the lanes base + fl(k*step). Fused ops are
    computed exactly in float64 (a float32 product with a small integer is exact there, and the
    sum's double rounding cannot matter at these magnitudes; the comparison with torch below
    checks it)."""
    f = np.float32
    start, end = f(start), f(end)
    if steps == 1:
        return np.array([start], dtype=np.float32)
    step = f(f(end - start) / f(steps - 1))
    half = steps // 2
    out = np.zeros(steps, dtype=np.float32)

    def fused(i):
        if i < half:
            return f(np.float64(step) * i + np.float64(start))
        return f(np.float64(end) - np.float64(step) * (steps - i - 1))

    i, V = 0, 8
    while i + 2 * V <= steps:
        for _ in range(2):
            base = fused(i)
            for k in range(V):
                out[i + k] = f(base + f(f(k) * step))
            i += V
    for j in range(i, steps):
        out[j] = fused(j)
    return out


def linspace_f32(start, end, steps):
    emu = torch.from_numpy(torch_cpu_linspace_avx2(start, end, steps))
    ref = torch.linspace(start, end, steps, dtype=F32)
    if not torch.equal(emu, ref):
        print("note: this torch's CPU linspace differs from the AVX2 kernel emulated here "
              "(stored: the AVX2 values, which the C code reproduces)", file=sys.stderr)
    return emu


class Schedule:
    def __init__(self, T=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                 prediction_type="epsilon", steps_offset=0, set_alpha_to_one=True, clip_sample=False):
        self.T, self.pred, self.offset = T, prediction_type, steps_offset
        self.clip = clip_sample
        if beta_schedule == "linear":
            betas = linspace_f32(beta_start, beta_end, T)
        elif beta_schedule == "scaled_linear":
            betas = linspace_f32(beta_start ** 0.5, beta_end ** 0.5, T) ** 2
        else:  # squaredcos_cap_v2: diffusers' betas_for_alpha_bar, Python doubles
            def abar(t):
                return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
            betas = torch.tensor([min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)], dtype=F32)
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        # DDIM's final (and DDIM inverse's initial) alpha_cumprod
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        # Euler / DPM sigma table, float32 torch then numpy (as diffusers' set_timesteps)
        self.sigma_table = np.array(((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5)


SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
          set_alpha_to_one=False, clip_sample=False)

# ---------------------------------------------------------------------------------------------
# set_timesteps of each class (numpy, as diffusers).


def trailing_np(T, N):
    return np.round(np.arange(T, 0, -T / N))[:N]


def ddim_timesteps(T, N, spacing, offset):
    if spacing == "linspace":
        return np.linspace(0, T - 1, N).round()[::-1].copy().astype(np.int64)
    if spacing == "leading":
        return (np.arange(0, N) * (T // N)).round()[::-1].copy().astype(np.int64) + offset
    return trailing_np(T, N).astype(np.int64) - 1


def ddim_inverse_timesteps(T, N, spacing, offset):
    if spacing == "leading":
        return (np.arange(0, N) * (T // N)).round().copy().astype(np.int64) + offset
    return trailing_np(T, N)[::-1].astype(np.int64) - 1


def euler_timesteps(T, N, spacing, offset):
    if spacing == "linspace":
        return np.linspace(0, T - 1, N, dtype=np.float32)[::-1].copy()
    if spacing == "leading":
        ts = (np.arange(0, N) * (T // N)).round()[::-1].copy().astype(np.float32)
        ts += offset
        return ts
    ts = trailing_np(T, N).copy().astype(np.float32)
    ts -= 1
    return ts


def dpm_timesteps(T, N, spacing, offset):
    last = T  # lambda_min_clipped = -inf
    if spacing == "linspace":
        return np.linspace(0, last - 1, N + 1).round()[::-1][:-1].copy().astype(np.int64)
    if spacing == "leading":
        return (np.arange(0, N + 1) * (last // (N + 1))).round()[::-1][:-1].copy().astype(np.int64) + offset
    return np.arange(last, 0, -T / N).round()[:N].copy().astype(np.int64) - 1


def interp_sigmas(sch, ts):
    s = np.interp(ts, np.arange(0, len(sch.sigma_table)), sch.sigma_table)
    return torch.from_numpy(np.concatenate([s, [0.0]]).astype(np.float32))


DEFAULT_SPACING = {"ddim": "leading", "ddim_inverse": "leading", "euler": "linspace",
                   "euler_a": "linspace", "dpmpp_2m": "linspace"}
TIMESTEPS = {"ddim": ddim_timesteps, "ddim_inverse": ddim_inverse_timesteps, "euler": euler_timesteps,
             "euler_a": euler_timesteps, "dpmpp_2m": dpm_timesteps}

# ---------------------------------------------------------------------------------------------
# Samplers: set-up and step, float32 tensors throughout (diffusers' arithmetic).


class Sampler:
    def __init__(self, kind, sch, N, spacing=None, eta=0.0):
        self.kind, self.sch, self.N, self.eta = kind, sch, N, eta
        spacing = spacing or DEFAULT_SPACING[kind]
        self.spacing = spacing
        ts = TIMESTEPS[kind](sch.T, N, spacing, sch.offset)
        self.timesteps = torch.from_numpy(np.ascontiguousarray(ts))
        self.init_noise_sigma = 1.0
        if kind in ("euler", "euler_a", "dpmpp_2m"):
            self.sigmas = interp_sigmas(sch, ts)
        if kind in ("euler", "euler_a"):
            m = self.sigmas.max()
            self.init_noise_sigma = m if spacing in ("linspace", "trailing") else (m ** 2 + 1) ** 0.5
        self.model_outputs = [None, None]
        self.lower_order_nums = 0

    def scale_model_input(self, x, i):
        if self.kind in ("euler", "euler_a"):
            sigma = self.sigmas[i]
            return x / ((sigma ** 2 + 1) ** 0.5)
        return x

    def needs_noise(self):
        return self.kind == "euler_a" or (self.kind == "ddim" and self.eta > 0)

    def step(self, out, i, x, noise):
        return getattr(self, "step_" + self.kind)(out, i, x, noise)

    def _x0_eps(self, out, x, a):  # DDIM family: x0 and eps from the model output at alpha a
        b = 1 - a
        if self.sch.pred == "epsilon":
            return (x - b ** 0.5 * out) / a ** 0.5, out
        return (a ** 0.5) * x - (b ** 0.5) * out, (a ** 0.5) * out + (b ** 0.5) * x  # v

    def step_ddim(self, out, i, x, noise):  # scheduling_ddim.py step()
        sch, t = self.sch, int(self.timesteps[i])
        prev_t = t - sch.T // self.N
        a = sch.alphas_cumprod[t]
        a_prev = sch.alphas_cumprod[prev_t] if prev_t >= 0 else sch.final_alpha_cumprod
        x0, eps = self._x0_eps(out, x, a)
        if sch.clip:
            x0 = x0.clamp(-1, 1)
        variance = ((1 - a_prev) / (1 - a)) * (1 - a / a_prev)
        std = self.eta * variance ** 0.5
        prev = a_prev ** 0.5 * x0 + (1 - a_prev - std ** 2) ** 0.5 * eps
        if self.eta > 0:
            prev = prev + std * noise
        return prev

    def step_ddim_inverse(self, out, i, x, noise):  # scheduling_ddim_inverse.py step()
        sch = self.sch
        t_dst = int(self.timesteps[i])
        t_src = min(t_dst - sch.T // self.N, sch.T - 1)
        a = sch.alphas_cumprod[t_src] if t_src >= 0 else sch.final_alpha_cumprod
        a_dst = sch.alphas_cumprod[t_dst]
        x0, eps = self._x0_eps(out, x, a)
        if sch.clip:
            x0 = x0.clamp(-1, 1)
        return a_dst ** 0.5 * x0 + (1 - a_dst) ** 0.5 * eps

    def _euler_x0(self, out, x, sigma):
        if self.sch.pred == "epsilon":
            return x - sigma * out
        return out * (-sigma / (sigma ** 2 + 1) ** 0.5) + (x / (sigma ** 2 + 1))  # v

    def step_euler(self, out, i, x, noise):  # scheduling_euler_discrete.py step(), s_churn 0
        sigma = self.sigmas[i]
        sigma_hat = sigma * (0.0 + 1)
        x0 = self._euler_x0(out, x, sigma)
        derivative = (x - x0) / sigma_hat
        return x + derivative * (self.sigmas[i + 1] - sigma_hat)

    def step_euler_a(self, out, i, x, noise):  # scheduling_euler_ancestral_discrete.py step()
        sigma = self.sigmas[i]
        x0 = self._euler_x0(out, x, sigma)
        s_from, s_to = self.sigmas[i], self.sigmas[i + 1]
        s_up = (s_to ** 2 * (s_from ** 2 - s_to ** 2) / s_from ** 2) ** 0.5
        s_down = (s_to ** 2 - s_up ** 2) ** 0.5
        derivative = (x - x0) / sigma
        prev = x + derivative * (s_down - sigma)
        return prev + noise * s_up

    @staticmethod
    def _alpha_sigma(sigma):
        alpha_t = 1 / ((sigma ** 2 + 1) ** 0.5)
        return alpha_t, sigma * alpha_t

    def step_dpmpp_2m(self, out, i, x, noise):  # scheduling_dpmsolver_multistep.py step()
        lower_order_final = i == len(self.timesteps) - 1   # final_sigmas_type "zero"
        a_s0, s_s0 = self._alpha_sigma(self.sigmas[i])
        if self.sch.pred == "epsilon":                      # convert_model_output (dpmsolver++)
            x0 = (x - s_s0 * out) / a_s0
        else:
            x0 = a_s0 * x - s_s0 * out
        self.model_outputs = [self.model_outputs[1], x0]
        a_t, s_t = self._alpha_sigma(self.sigmas[i + 1])
        lam_t = torch.log(a_t) - torch.log(s_t)
        lam_s0 = torch.log(a_s0) - torch.log(s_s0)
        h = lam_t - lam_s0
        if self.lower_order_nums < 1 or lower_order_final:  # dpm_solver_first_order_update
            prev = (s_t / s_s0) * x - (a_t * (torch.exp(-h) - 1.0)) * x0
        else:                                                # multistep second order, midpoint
            a_s1, s_s1 = self._alpha_sigma(self.sigmas[i - 1])
            lam_s1 = torch.log(a_s1) - torch.log(s_s1)
            m0, m1 = self.model_outputs[1], self.model_outputs[0]
            h_0 = lam_s0 - lam_s1
            r0 = h_0 / h
            D0, D1 = m0, (1.0 / r0) * (m0 - m1)
            prev = ((s_t / s_s0) * x - (a_t * (torch.exp(-h) - 1.0)) * D0
                    - 0.5 * (a_t * (torch.exp(-h) - 1.0)) * D1)
        if self.lower_order_nums < 2:
            self.lower_order_nums += 1
        return prev


# ---------------------------------------------------------------------------------------------
# The analytic model and the pipeline loop (diffusers' StableDiffusionPipeline __call__ order).

B, C, H, W = 2, 4, 3, 3


def model(x, t, cond_offset=0.0):
    return torch.tanh(0.5 * x + (math.sin(float(t) / 100) + cond_offset))


def model_batched(x, t, cfg):
    if not cfg:
        return model(x, t)
    return torch.cat([model(x[:B], t), model(x[B:], t, 0.3)])


def run_sampler(sampler, rng, init=None, guidance=1.0):
    cfg = guidance > 1
    if init is None:
        init = rng.normal((B, C, H, W))
    x = init * sampler.init_noise_sigma
    traj = [x.clone()]
    for i, t in enumerate(sampler.timesteps):
        xin = torch.cat([x] * 2) if cfg else x
        xin = sampler.scale_model_input(xin, i)
        out = model_batched(xin, t, cfg)
        if cfg:
            u, c = out.chunk(2)
            out = u + guidance * (c - u)
        noise = rng.normal((B, C, H, W)) if sampler.needs_noise() else None
        x = sampler.step(out, i, x, noise)
        traj.append(x.clone())
    return torch.stack(traj)


# The runs; tests/test_diffusion.c has the same table (name, kind, pred, steps, eta, guidance,
# spacing, seed). Inversion runs start from the stored clean latents "inv.x0".
RUNS = []
for pred in ("epsilon", "v_prediction"):
    for steps in (4, 10):
        p = "eps" if pred == "epsilon" else "v"
        RUNS += [
            (f"ddim_eta0_{p}_{steps}", "ddim", pred, steps, 0.0, 1.0, None),
            (f"ddim_eta05_{p}_{steps}", "ddim", pred, steps, 0.5, 1.0, None),
            (f"euler_{p}_{steps}", "euler", pred, steps, 0.0, 1.0, None),
            (f"euler_a_{p}_{steps}", "euler_a", pred, steps, 0.0, 1.0, None),
            (f"dpmpp_2m_{p}_{steps}", "dpmpp_2m", pred, steps, 0.0, 1.0, None),
            (f"ddim_inverse_{p}_{steps}", "ddim_inverse", pred, steps, 0.0, 1.0, None),
        ]
RUNS += [
    ("euler_leading_eps_10", "euler", "epsilon", 10, 0.0, 1.0, "leading"),
    ("euler_a_trailing_v_10", "euler_a", "v_prediction", 10, 0.0, 1.0, "trailing"),
    ("ddim_trailing_v_10", "ddim", "v_prediction", 10, 0.0, 1.0, "trailing"),
    ("ddim_linspace_eps_10", "ddim", "epsilon", 10, 0.0, 1.0, "linspace"),
    ("dpmpp_2m_leading_eps_10", "dpmpp_2m", "epsilon", 10, 0.0, 1.0, "leading"),
    ("dpmpp_2m_cfg_eps_10", "dpmpp_2m", "epsilon", 10, 0.0, 7.5, None),
    ("ddim_cfg_v_4", "ddim", "v_prediction", 4, 0.0, 5.0, None),
    ("ddim_inverse_trailing_eps_10", "ddim_inverse", "epsilon", 10, 0.0, 1.0, "trailing"),
]
RUN_SEED0 = 7000  # run r uses seed RUN_SEED0 + r


def put(name, t):
    assert name not in TENSORS, name
    TENSORS[name] = torch.as_tensor(t).detach().to(torch.float64).clone()


def gen_schedules():
    for name, cfg in (("sd", SD), ("linear", {}), ("cos", dict(beta_schedule="squaredcos_cap_v2"))):
        s = Schedule(**cfg)
        put(f"sched.{name}.betas", s.betas)
        put(f"sched.{name}.alphas_cumprod", s.alphas_cumprod)
        put(f"sched.{name}.sigmas", torch.from_numpy(s.sigma_table))


NLIST = [1, 2, 3, 4, 5, 7, 10, 13, 20, 25, 30, 50, 61, 100, 999, 1000]


def gen_timesteps():
    sch = Schedule(**SD)
    for kind in ("ddim", "ddim_inverse", "euler", "dpmpp_2m"):
        for spacing in ("leading", "trailing", "linspace"):
            if kind == "ddim_inverse" and spacing == "linspace":
                continue
            ts, sig = [], []
            for N in NLIST:
                t = TIMESTEPS[kind](sch.T, N, spacing, sch.offset)
                assert len(t) == N, (kind, spacing, N)
                ts.append(torch.from_numpy(np.ascontiguousarray(t)).to(torch.float64))
                if kind in ("euler", "dpmpp_2m"):
                    sig.append(interp_sigmas(sch, t).to(torch.float64))
            put(f"ts.{kind}.{spacing}", torch.cat(ts))
            if sig:
                put(f"sig.{kind}.{spacing}", torch.cat(sig))


def gen_ddpm():
    sch = Schedule(**SD)
    rng = Rng(99)
    x0 = rng.normal((3, 2, 2, 3))
    eps = rng.normal((3, 2, 2, 3))
    t = torch.tensor([0, 500, 999])
    ac = sch.alphas_cumprod[t].reshape(-1, 1, 1, 1)   # add_noise / get_velocity, float32
    put("ddpm.x0", x0)
    put("ddpm.eps", eps)
    put("ddpm.t", t)
    put("ddpm.xt", ac ** 0.5 * x0 + (1 - ac) ** 0.5 * eps)
    put("ddpm.v", ac ** 0.5 * eps - (1 - ac) ** 0.5 * x0)


def gen_rng():
    put("rng.seed0", Rng(0).normal((64,)))
    r = Rng(0x123456789ABCDEF0)
    r.counter = (1 << 32) - 5   # across the carry into the counter's high word
    put("rng.seed_big", r.normal((16,)))


def gen_runs():
    x0 = Rng(4242).normal((B, C, H, W))
    put("inv.x0", x0)
    worst = 0.0
    for r, (name, kind, pred, steps, eta, g, spacing) in enumerate(RUNS):
        sch = Schedule(**dict(SD, prediction_type=pred))
        sampler = Sampler(kind, sch, steps, spacing, eta)
        rng = Rng(RUN_SEED0 + r)
        traj = run_sampler(sampler, rng, x0 if kind == "ddim_inverse" else None, g)
        put(f"run.{name}.t", sampler.timesteps)
        put(f"run.{name}.traj", traj)
        if kind == "ddim_inverse":   # measure: DDIM sampling back from the inverted latents
            back = Sampler("ddim", sch, steps, spacing)
            rec = run_sampler(back, Rng(0), traj[-1])[-1]
            err = float((rec - x0).abs().max() / x0.abs().max())
            worst = max(worst, err)
            print(f"{name}: invert + sample reconstruction rel error {err:.3g}", file=sys.stderr)
    return worst


# ---------------------------------------------------------------------------------------------


def write_safetensors(path, tensors, metadata):
    """F32 fixture file (st_io.write_raw): tensors name -> tensor, metadata last."""
    entries = []
    for name, t in tensors.items():
        a = t.detach().to(torch.float32).contiguous().reshape(-1)
        entries.append((name, "F32", list(t.shape), struct.pack("<%df" % a.numel(), *a.tolist())))
    return st_io.write_raw(path, entries, metadata, keep_empty_metadata=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output .safetensors path")
    args = ap.parse_args()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    gen_schedules()
    gen_timesteps()
    gen_ddpm()
    gen_rng()
    gen_runs()
    for k, v in TENSORS.items():
        assert torch.isfinite(v).all(), k
        # stored as F32: every value must already be a float32 (no silent rounding here)
        assert torch.equal(v.to(F32).to(torch.float64), v), k
    size = write_safetensors(args.out, TENSORS, {
        "generator": "tests/reference/gen_sampler_golden.py",
        "torch": torch.__version__.split("+")[0],
        "numpy": np.__version__,
    })
    print(f"{args.out}: {len(TENSORS)} tensors, {size} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
