"""bf16 against float32 on CPU, per instruction set: what `precision="bf16"` should run where.

For each framework (torch, TensorFlow; each in a process of its own) and each oneDNN instruction
set limit (`ONEDNN_MAX_CPU_ISA`: AVX2 as on an AMD Zen 3 or Intel Haswell, AVX512_CORE as on a
Skylake-SP without bf16 instructions, and the machine's own), a worker times the encoder forward
pass of `predict` in float32 and in bf16 in interleaved rounds (median of --rounds), with the
settings `predict` uses: torch under `torch.inference_mode`, channels-last as
`zoobot.torch.cpu.prefers_channels_last` picks it, bf16 under autocast with convolution +
GELU fused where the primitive runs; TensorFlow in one `tf.function`, bf16 through
`zoobot.tf.runner.bfloat16_copy`. Figures are images/s and the ratio bf16 / float32 of the same
run; a bf16 pass that raises is reported as failing. The AVX2 limit applies to torch's own (ATen)
kernels too (`ATEN_CPU_CAPABILITY=avx2`).

Run: python benchmarks/bf16_cpu.py [--json out.json] [--rounds 5] [--batch 8] [--size 128]
     [--threads 1] [--architectures convnext_nano,efficientnet_b0] [--isas AVX2,AVX512_CORE,native]
     (needs torch and TensorFlow with the zoobot packages: the parity environment; ~10 minutes)
"""

from __future__ import annotations

import argparse
import contextlib
import copy as copy_module
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

WORKER_ENV = "ZOOBOT_BF16_BENCH_WORKER"


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (else the platform's name)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def isa_env(isa: str) -> dict[str, str]:
    """The environment that holds oneDNN (and for AVX2, ATen) to `isa` ("native": no limit)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
    }
    if isa != "native":
        env["ONEDNN_MAX_CPU_ISA"] = isa
    if isa == "AVX2":
        env["ATEN_CPU_CAPABILITY"] = "avx2"
    return env


def time_rounds(runs: dict, rounds: int, batch: int) -> dict[str, float | str]:
    """Images/s of each callable (median over interleaved rounds), or the error it raised."""
    results: dict[str, list[float] | str] = {}
    for name, run in runs.items():
        try:
            run()  # warm-up: tracing, kernel selection, allocator
            results[name] = []
        except Exception as err:  # a precision this CPU cannot run
            results[name] = f"fails: {type(err).__name__}: {str(err).splitlines()[0][:160]}"
    for _ in range(rounds):
        for name, run in runs.items():
            if isinstance(results[name], list):
                start = time.perf_counter()
                run()
                results[name].append(batch / (time.perf_counter() - start))
    return {k: v if isinstance(v, str) else statistics.median(v) for k, v in results.items()}


def torch_runner(model, images, precision: str):
    """One batch through `model` as `zoobot.torch.predict` runs it at `precision`."""
    import torch

    from zoobot.torch.cpu import prefers_channels_last
    from zoobot.torch.fusion import fused_conv_gelu

    layout = (
        torch.channels_last if prefers_channels_last(model, precision) else torch.contiguous_format
    )
    model = copy_module.deepcopy(model).to(memory_format=layout)
    images = images.contiguous(memory_format=layout)
    bf16 = precision == "bf16"

    def run():
        fused = fused_conv_gelu(model) if bf16 else contextlib.nullcontext()
        with fused, torch.inference_mode(), torch.autocast("cpu", enabled=bf16):
            model(images)

    return run


def torch_worker(args) -> list[dict]:
    import torch

    from zoobot.torch.cpu import reused_memory
    from zoobot.torch.encoders import load_encoder
    from zoobot.torch.fusion import probe

    torch.set_num_threads(args.threads)
    rows = []
    for architecture in args.architectures:
        torch.manual_seed(0)
        model = load_encoder(architecture, 3).eval()
        images = torch.rand(args.batch, 3, args.size, args.size)
        runs = {p: torch_runner(model, images, p) for p in ("32", "bf16")}
        with reused_memory():
            figures = time_rounds(runs, args.rounds, args.batch)
        rows.append({"architecture": architecture, **figures, "fused_conv_gelu": probe()[0]})
    return rows


def tf_runner(encoder, images, precision: str):
    """One batch through `encoder` as `zoobot.tf.predict` runs it at `precision`."""
    import tensorflow as tf

    from zoobot.tf.runner import bfloat16_copy

    model = encoder if precision == "32" else bfloat16_copy(encoder)
    step = tf.function(lambda x: tf.cast(model(x, training=False), tf.float32))
    return lambda: step(images).numpy()


def tf_worker(args) -> list[dict]:
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from zoobot.tf.encoders import load_encoder

    rows = []
    rng = np.random.default_rng(0)
    for architecture in args.architectures:
        encoder = load_encoder(architecture, 3)
        images = tf.constant(rng.random((args.batch, args.size, args.size, 3), np.float32))
        runs = {p: tf_runner(encoder, images, p) for p in ("32", "bf16")}
        rows.append({"architecture": architecture, **time_rounds(runs, args.rounds, args.batch)})
    return rows


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--architectures", default="convnext_nano,efficientnet_b0")
    parser.add_argument("--isas", default="AVX2,AVX512_CORE,native")
    parser.add_argument("--frameworks", default="torch,tf")
    parser.add_argument("--framework", help=argparse.SUPPRESS)  # a worker's
    args = parser.parse_args(argv)
    args.architectures = args.architectures.split(",")
    return args


def main() -> None:
    args = parse()
    if os.environ.get(WORKER_ENV):
        rows = torch_worker(args) if args.framework == "torch" else tf_worker(args)
        print(json.dumps(rows))
        return
    results = []
    for framework in args.frameworks.split(","):
        for isa in args.isas.split(","):
            env = {
                **isa_env(isa),
                WORKER_ENV: "1",
                "OMP_NUM_THREADS": str(args.threads),
                "TF_CPP_MIN_LOG_LEVEL": "3",
            }
            command = [sys.executable, __file__, *sys.argv[1:], "--framework", framework]
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if done.returncode:
                sys.exit(f"{framework} {isa} worker failed:\n{done.stderr[-3000:]}")
            for row in json.loads(done.stdout.strip().splitlines()[-1]):
                fp32, bf16 = row["32"], row["bf16"]
                ratio = bf16 / fp32 if isinstance(bf16, float) and isinstance(fp32, float) else None
                results.append({"framework": framework, "isa": isa, **row, "ratio": ratio})
                print(json.dumps(results[-1]), flush=True)
    machine = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "settings": {k: getattr(args, k) for k in ("rounds", "batch", "size", "threads")},
    }
    print(f"\n{machine['cpu']}, {args.threads} thread(s), batch {args.batch}, {args.size} px")
    print("| framework | oneDNN ISA | model | fp32 img/s | bf16 img/s | bf16 / fp32 |")
    print("|---|---|---|---:|---:|---:|")
    for r in results:
        # a failure as "fails: ErrorType" (the message is in the JSON)
        bf16 = (
            ":".join(r["bf16"].split(":")[:2]) if isinstance(r["bf16"], str) else f"{r['bf16']:.2f}"
        )
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        cells = [r["framework"], r["isa"], r["architecture"], f"{r['32']:.2f}", bf16, ratio]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=2))


if __name__ == "__main__":
    main()
