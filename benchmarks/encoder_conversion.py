"""Build and convert the published Zoobot encoders in zoobot.tf, against timm building them.

For each published encoder's architecture, full size and randomly initialised, in one process
(torch and TensorFlow together, as the parity session runs them): timm's `create_model` (the
peer), then zoobot.tf's Keras build (`architectures.build_encoder`) and the strict conversion of
timm's state dict (`architectures.load_timm_state`), each timed in wall-clock seconds; the ratio is
(build + convert) / timm's build. The same run measures the largest feature difference (max
|keras - timm| / max |timm|) at the Hub input size and timm's test_input_size, with every norm
scale and bias randomised and the BatchNorm statistics set from the images (as the parity session
does), so the figure is the port's float32 rounding, not a blown-up random network's.

    python benchmarks/encoder_conversion.py [--json out.json] [--only maxvit_large_tf_224,...]
    (about 5 minutes on 2 idle cores; needs the parity environment: torch, timm and TensorFlow)
"""

from __future__ import annotations

import sys

sys.modules.setdefault(
    "triton", None
)  # torch and TensorFlow in one process (tests/parity/conftest.py)

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402

from zoobot.shared.io import atomic_write_text  # noqa: E402
from zoobot.tf import architectures  # noqa: E402

# architecture -> (model_args, image sizes): the published Zoobot encoders (issue 18)
PUBLISHED = {
    "convnext_nano": ({}, (224,)),
    "resnet50": ({}, (224,)),
    "efficientnet_b0": ({}, (224,)),
    "tf_efficientnetv2_s": ({}, (224, 384)),
    "maxvit_rmlp_tiny_rw_256": ({"img_size": 224}, (224,)),
    "maxvit_rmlp_small_rw_224": ({}, (224,)),
    "maxvit_rmlp_base_rw_224": ({}, (224,)),
    "maxvit_large_tf_224": ({}, (224,)),
}
BATCH = 2


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Norm scales and biases (constant at init, hiding a swapped mapping) get random values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and tensor.ndim == 1 and "running" not in name:
                tensor.add_(0.1 * torch.randn(tensor.shape, generator=generator))


def calibrate_batchnorm(model: torch.nn.Module, images: torch.Tensor) -> None:
    """Running statistics of the images: one train-mode pass with a cumulative average."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    with torch.no_grad():
        model(images)
    model.eval()


def measure(architecture: str, model_args: dict, sizes: tuple[int, ...]) -> dict:
    rng = np.random.default_rng(0)
    images = {s: rng.uniform(0, 1, (BATCH, 3, s, s)).astype(np.float32) for s in sizes}
    torch.manual_seed(0)
    start = time.perf_counter()
    model = timm.create_model(architecture, num_classes=0, **model_args)
    timm_build = time.perf_counter() - start
    randomise(model, seed=1)
    calibrate_batchnorm(model, torch.from_numpy(images[sizes[0]]))
    state = {k: v.numpy() for k, v in model.state_dict().items()}

    start = time.perf_counter()
    encoder = architectures.build_encoder(architecture, 3, model_args)
    keras_build = time.perf_counter() - start
    start = time.perf_counter()
    architectures.load_timm_state(encoder, state)
    convert = time.perf_counter() - start

    differences = {}
    for size, x in images.items():
        with torch.no_grad():
            reference = model(torch.from_numpy(x)).numpy()
        got = np.asarray(encoder(x.transpose(0, 2, 3, 1), training=False))
        differences[f"{size}px"] = float(np.abs(got - reference).max() / np.abs(reference).max())
    return {
        "architecture": architecture,
        "model_args": model_args,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "timm_build_s": round(timm_build, 2),
        "keras_build_s": round(keras_build, 2),
        "convert_s": round(convert, 2),
        "ratio": round((keras_build + convert) / timm_build, 2),
        "max_relative_difference": differences,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--only", help="comma-separated architectures (default: all published)")
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else list(PUBLISHED)
    torch.set_float32_matmul_precision("highest")
    rows = []
    print(f"CPU: {cpu_name()}; torch threads {torch.get_num_threads()}")
    print(
        "| architecture | params | timm build s | Keras build s | convert s | ratio | max rel diff |"
    )
    print("|---|---|---|---|---|---|---|")
    for architecture in chosen:
        model_args, sizes = PUBLISHED[architecture]
        row = measure(architecture, model_args, sizes)
        rows.append(row)
        diffs = ", ".join(f"{k} {v:.1e}" for k, v in row["max_relative_difference"].items())
        print(
            f"| {architecture} {model_args or ''} | {row['parameters'] / 1e6:.1f}M "
            f"| {row['timm_build_s']} | {row['keras_build_s']} | {row['convert_s']} "
            f"| {row['ratio']} | {diffs} |",
            flush=True,
        )
    if args.json:
        result = {"cpu": cpu_name(), "timm": timm.__version__, "rows": rows}
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
