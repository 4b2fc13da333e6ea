"""torch.nn.functional.linear on the shapes of `bench_gemm paths` (examples/bench_gemm.rs).

Same shapes, rows, rounds and cold-weight rotation as the Rust benchmark (up to 8 rows the
weights rotate over copies totalling over 96 MiB); prints the same markdown table: GFLOP/s of
torch f32 and torch bfloat16 (weights and activations in bf16), with the ratio to torch f32.

    python3 scripts/bench/gemm_torch.py [smollm2|1b|all] [ROWS,..]

THREADS sets torch's threads (default: every core); CPU_TIME=1 times by the process's CPU time
(with THREADS=1: one core's throughput, undistorted by other processes on a shared host).
"""

import math
import os
import sys
import time

import torch
import torch.nn.functional as F

SMOLLM2 = [
    ("135m qkv", 960, 576),
    ("135m o", 576, 576),
    ("135m gate_up", 3072, 576),
    ("135m down", 576, 1536),
    ("135m lm_head", 49152, 576),
]
ONE_B = [
    ("1b qkv", 3072, 2048),
    ("1b o", 2048, 2048),
    ("1b gate_up", 16384, 2048),
    ("1b down", 2048, 8192),
]


def main():
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    shapes = {"smollm2": SMOLLM2, "1b": ONE_B}.get(which, SMOLLM2 + ONE_B)
    rows = [int(r) for r in sys.argv[2].split(",")] if len(sys.argv) > 2 else [1, 8, 128, 1024]
    rounds = int(os.environ.get("ROUNDS", "5"))
    threads = int(os.environ.get("THREADS", os.cpu_count()))
    cpu = os.environ.get("CPU_TIME", "0") not in ("", "0")
    clock = time.process_time if cpu else time.perf_counter
    torch.set_num_threads(threads)
    print(f"host: torch {torch.__version__}, {threads} threads, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}; "
          f"timed by {'CPU time' if cpu else 'wall clock'}")
    print("| shape | rows | torch f32 | torch bf16 |")
    print("|---|---|---|---|")
    torch.manual_seed(0)
    with torch.inference_mode():
        for name, n, k in shapes:
            for m in rows:
                copies = min(max(math.ceil((96 << 20) / (n * k * 4)), 1), 64) if m <= 8 else 1
                ws = [torch.randn(n, k) * 0.02 for _ in range(copies)]
                x = torch.randn(m, k)
                runs = [
                    ("f32", x, ws),
                    ("bf16", x.bfloat16(), [w.bfloat16() for w in ws]),
                ]
                flop = 2.0 * m * n * k
                inner = []
                for _, xx, ww in runs:
                    t0 = clock()
                    F.linear(xx, ww[0])
                    inner.append(min(max(int(0.05 / max(clock() - t0, 1e-6)), 1), 10_000))
                best = [math.inf] * len(runs)
                nxt = 0
                for _ in range(rounds):
                    for r, (_, xx, ww) in enumerate(runs):
                        t0 = clock()
                        for _ in range(inner[r]):
                            nxt = (nxt + 1) % copies
                            F.linear(xx, ww[nxt])
                        best[r] = min(best[r], (clock() - t0) / inner[r])
                g = [flop / b / 1e9 for b in best]
                print(f"| {name} ({n}×{k}) | {m} | {g[0]:.1f} | {g[1]:.1f} ({best[0] / best[1]:.2f}×) |",
                      flush=True)


if __name__ == "__main__":
    main()
