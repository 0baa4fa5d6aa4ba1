"""Chunked ``fda_loss`` vs the literal ``fda_loss_dense``: time and peak memory, forward + backward.

Each variant runs in its own fresh subprocess on identical seeded inputs, so one cannot
inherit the other's allocator state or memory high-water mark. Memory is measured as:

* cuda: ``torch.cuda.max_memory_allocated`` (tensor bytes), reported as the peak over the
  loss call and that peak minus what was allocated before it (inputs, weights);
* cpu: the process's peak resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``), reported
  as the peak and the peak minus the high-water mark reached before the first loss call.
  RSS includes allocator slack and library pages, so it is an upper bound on the tensors,
  but it sees everything torch allocates (tracemalloc does not).

Time is the median (and min) wall time of ``repeats`` forward + backward calls after
``warmup`` untimed ones. The two variants' values and gradients are compared at the end.

    python benchmarks/fda_memory.py --device cpu --out fda_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

# Runs as a script from any directory: make the repository's package importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.perf_report import finish_report, run_context  # noqa: E402
from ovs3d_nerfstudio.losses import fda_loss, fda_loss_dense  # noqa: E402

VARIANTS = ("chunked", "dense")
CONFIG_KEYS = ("device", "patches", "tokens", "labels", "dino_dim", "chunk_size", "repeats", "warmup", "seed")


def make_inputs(args: argparse.Namespace, device: torch.device):
    """Seeded DINO-like tokens (a few clusters, so Corr_F straddles the 0.7 shift) and
    cosine-range logits, identical in every subprocess."""
    gen = torch.Generator().manual_seed(args.seed)
    n = args.tokens * args.tokens
    centres = torch.randn(6, args.dino_dim, generator=gen)
    labels = torch.randint(0, 6, (args.patches, n), generator=gen)
    tokens = centres[labels] + 0.5 * torch.randn(args.patches, n, args.dino_dim, generator=gen)
    logits = torch.rand(args.patches, n, args.labels, generator=gen) * 2 - 1
    return logits.to(device).requires_grad_(), tokens.to(device)


def worker(args: argparse.Namespace) -> None:
    """One variant in this (fresh) process; prints a JSON line, saves its gradient."""
    device = torch.device(args.device)
    logits, tokens = make_inputs(args, device)

    def step():
        if args.worker == "chunked":
            pos, neg = fda_loss(logits, tokens, chunk_size=args.chunk_size)
        else:
            pos, neg = fda_loss_dense(logits, tokens)
        (pos + neg).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return pos.detach(), neg.detach()

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

    times = []
    for i in range(args.warmup + args.repeats):
        logits.grad = None
        start = time.perf_counter()
        pos, neg = step()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)

    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    torch.save(logits.grad.cpu(), args.grad_out)
    print(
        json.dumps(
            {
                "variant": args.worker,
                "chunk_size": args.chunk_size if args.worker == "chunked" else None,
                "median_s": statistics.median(times),
                "min_s": min(times),
                "times_s": times,
                "peak_mib": peak / 2**20,
                "peak_over_inputs_mib": (peak - before) / 2**20,
                "fda_pos": pos.item(),
                "fda_neg": neg.item(),
                "torch_threads": torch.get_num_threads(),
            }
        )
    )


def run_variant(variant: str, args: argparse.Namespace, grad_path: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", variant, "--grad-out", grad_path]
    for name in CONFIG_KEYS:
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--patches", type=int, default=8, help="P, patches per batch (official: 8)")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per patch side; N = tokens^2 (official: 32)")
    parser.add_argument("--labels", type=int, default=7, help="C, text labels")
    parser.add_argument("--dino-dim", type=int, default=768, help="DINO token width (dino_vitb8: 768)")
    parser.add_argument("--chunk-size", type=int, default=128, help="rows per chunk of the chunked loss")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--worker", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--grad-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker is not None:
        worker(args)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device")

    report = {"config": {k: getattr(args, k) for k in CONFIG_KEYS}, **run_context(args.device)}
    with tempfile.TemporaryDirectory() as tmp:
        grad_paths = {v: os.path.join(tmp, f"{v}.pt") for v in VARIANTS}
        results = [run_variant(v, args, grad_paths[v]) for v in VARIANTS]
        grads = {v: torch.load(grad_paths[v]) for v in VARIANTS}
    chunked, dense = results
    agreement = {
        "abs_diff_pos": abs(chunked["fda_pos"] - dense["fda_pos"]),
        "abs_diff_neg": abs(chunked["fda_neg"] - dense["fda_neg"]),
        "max_abs_grad_diff": (grads["chunked"] - grads["dense"]).abs().max().item(),
        "max_abs_grad": grads["dense"].abs().max().item(),
    }
    memory_method = (
        "torch.cuda.max_memory_allocated (tensor bytes)"
        if args.device == "cuda"
        else "peak RSS (getrusage ru_maxrss) of a fresh subprocess per variant"
    )
    machine = report["machine"]["gpu"] or f"{report['machine']['cpu']}, {report['machine']['cpu_count']} CPUs"
    n = args.tokens**2

    shape = f"P={args.patches} N={n} ({args.tokens}x{args.tokens}) C={args.labels} Cd={args.dino_dim}"
    print(f"FDA loss, forward + backward: {shape}")
    print(f"device: {args.device} ({machine}), torch {torch.__version__}, {results[0]['torch_threads']} threads")
    print(f"memory: {memory_method}; time: median of {args.repeats} after {args.warmup} warm-up")
    print(f"dense pair tensor [P,N,N,C] alone: {args.patches * n * n * args.labels * 4 / 2**20:.0f} MiB in float32")
    header = (
        f"{'variant':<9} {'chunk':>5} {'median s':>9} {'min s':>8} {'peak MiB':>9} {'peak-inputs MiB':>16} "
        f"{'fda_pos':>12} {'fda_neg':>12}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['variant']:<9} {str(r['chunk_size'] or '-'):>5} {r['median_s']:>9.3f} {r['min_s']:>8.3f} "
            f"{r['peak_mib']:>9.1f} {r['peak_over_inputs_mib']:>16.1f} {r['fda_pos']:>12.6g} {r['fda_neg']:>12.6g}"
        )
    print(
        f"agreement: |d pos| = {agreement['abs_diff_pos']:.2e}, |d neg| = {agreement['abs_diff_neg']:.2e}, "
        f"max |d grad| = {agreement['max_abs_grad_diff']:.2e} (max |grad| = {agreement['max_abs_grad']:.2e})"
    )

    report.update(n_tokens=n, memory_method=memory_method, results=results, agreement=agreement)
    finish_report(report, args.out)


if __name__ == "__main__":
    main()
