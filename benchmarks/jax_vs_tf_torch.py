"""zoobot.tf on JAX against zoobot.tf on TensorFlow and zoobot.torch: one run, same weights and images.

The machinery of `benchmarks/tf_vs_torch.py` with a third worker, `--framework jax`
(`benchmarks/tf_vs_torch_worker.py`: `zoobot.tf` with `KERAS_BACKEND=jax`; Keras compiles its
train and predict steps with `jax.jit`, and TensorFlow only reads the data). The three workers
never share a process, get the same tasks back to back in an order that reverses every round, and
only one computes at a time. Per architecture a randomly initialised `zoobot.torch.ZoobotTree`
(decals_dr5 head) is saved once in the Hub layout and loaded by each side's `from_pretrained`.

Figures (issue 19), each JAX over the faster of TF and torch in the same round (target >= 0.8x):
1. predictions from the image files, per architecture (424 px JPEGs -> 224 px, fp32, n_samples=1,
   the same batch size and decoding workers);
2. training images/s (Keras `fit` on `train_dataset` for TF and JAX, Lightning for torch), the
   same architecture and batch, fp32, after warm-up steps (which include JAX's compilation).
TF and torch against JAX are also printed, and the vote fractions of the three are compared.

What made JAX slow (issue 19, convnext_nano, batch 16, profiled with `jax.profiler` on an AMD EPYC
Zen 4, 2 cores): the train step compiles once (no recompilation); about half of its time was the
1x1 (`conv_mlp`) and patchify convolutions, whose kernel gradients XLA:CPU runs as convolutions
with an image-sized window; and JAX's own gradient of the shifted-sum depthwise layers (7x7
separate reductions over the batch for the kernel) took ~30x their forward pass in a one-layer
micro-benchmark (0.67 s against 22 ms at 56x56x80). `zoobot.tf.patch_conv` (matmuls) and the
hand-written depthwise gradient in `zoobot.tf.depthwise` took the gradient of the loss from 11.0 s
to 5.9 s per batch (same machine load). XLA:CPU flags of jaxlib 0.10.2 (`--xla_cpu_use_onednn`,
`--xla_cpu_use_xnnpack=false`, `--xla_cpu_enable_fast_math`, `--xla_cpu_prefer_vector_width=512`,
`--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY`,
`--xla_cpu_use_thunk_runtime=false`, `--xla_cpu_multi_thread_eigen=false`) changed neither predict
nor the gradient beyond the machine's noise; `--xla_cpu_experimental_ynn_fusion_type=` (no YNNPACK
fusions) made the gradient ~1.5x slower. zoobot sets none of them.

Run: python benchmarks/jax_vs_tf_torch.py [--json out.json] [--rounds 3] [--images 256]
     [--architectures efficientnet_b0,convnext_nano] [--quick]
"""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tf_vs_torch  # noqa: E402
from tf_vs_torch import Bench, Figure, Side, Step  # noqa: E402

SIDES = ("torch", "tf", "jax")
NAMES = {"torch": "zoobot.torch", "tf": "zoobot.tf on TensorFlow", "jax": "zoobot.tf on JAX"}


class FasterOfTwo(Figure):
    """JAX over the faster of TF and torch: each round's ratio to that round's faster peer."""

    def __init__(self, *args):
        super().__init__(*args)
        self.peers: dict[str, list[float]] = {"tf": [], "torch": []}

    @property
    def ratio(self) -> float | None:
        rounds = [
            o / max(t, p)
            for o, t, p in zip(self.ours, self.peers["tf"], self.peers["torch"], strict=False)
        ]
        return statistics.median(rounds) if rounds else None

    def to_json(self) -> dict:
        return {**super().to_json(), "peers": self.peers}


class Three(Bench):
    """`tf_vs_torch.Bench` with the JAX side: predict and train, JAX against TF and torch."""

    benchmark_name = "zoobot.tf on JAX vs zoobot.tf on TensorFlow and zoobot.torch"
    ours_is = "zoobot.tf on JAX, the baseline the faster of the other two in each round"

    def figure(self, key: str, *args) -> Figure:
        if key not in self.figures:
            self.figures[key] = FasterOfTwo(key, *args)
        return self.figures[key]

    def _record_peers(self, figure: FasterOfTwo, results: list, steps: list[Step]) -> None:
        """Each round's TF and torch figures (`group` kept the faster as the baseline too)."""
        for step, result in zip(steps, results, strict=True):
            if result is not None and step.side in figure.peers:
                figure.peers[step.side].append(result["images_per_second"])

    def _steps(self, label: str, task: dict, figure: FasterOfTwo, out: dict | None) -> list[Step]:
        return [
            Step(
                f"{label} {side}",
                side,
                task | ({"fractions_out": out[side]} if out else {}),
                [(figure, "ours" if side == "jax" else "peer")],
            )
            for side in SIDES
        ]

    def _run(self, sides: dict[str, Side], r: int, steps: list[Step], figure: FasterOfTwo):
        # `group` returns the results in the order it ran the steps (reversed in odd rounds)
        ordered = steps if r % 2 == 0 else steps[::-1]
        by_side = dict(zip((s.side for s in ordered), self.group(sides, r, steps), strict=True))
        results = [by_side[s.side] for s in steps]
        self._record_peers(figure, results, steps)
        # `group` listed both peers as baselines: the baseline of a round is the faster one
        figure.baseline[:] = [max(pair) for pair in zip(*figure.peers.values(), strict=False)]
        return results

    def round_predict(self, sides: dict[str, Side], r: int) -> None:
        a = self.args
        for arch in a.architectures:
            figure = self.figure(
                f"predict_{arch}_jax_vs_faster",
                f"predict {arch}, JAX vs the faster of TF and torch, image files, fp32",
                "img/s",
                0.8,
                "the faster of zoobot.tf on TensorFlow and zoobot.torch",
            )
            task = {
                "task": "predict",
                "model": str(self.models[arch]),
                "batch_size": a.batch_size,
                "num_workers": a.num_workers,
                "image_size": 224,
                "kind": "files",
                "source": str(self.catalog),
                "warm_source": str(self.warm_catalog),
            }
            out = {s: str(self.scratch / f"fractions-{arch}-{s}-{r}.npz") for s in SIDES}
            results = self._run(sides, r, self._steps(arch, task, figure, out), figure)
            if all(results):
                self.compare_three(arch, out)

    def compare_three(self, arch: str, out: dict[str, str]) -> None:
        """Max |difference| of expected vote fractions: JAX and TF against torch."""
        index = np.asarray(self.schema.answer_question_index)

        def fractions(path: str) -> dict[str, np.ndarray]:
            data = np.load(path)
            alpha = data["concentrations"].astype(np.float64)
            totals = np.zeros((len(alpha), index.max() + 1))
            np.add.at(totals.T, index, alpha.T)
            return dict(zip(data["ids"], alpha / totals[:, index], strict=True))

        torch_f = fractions(out["torch"])
        for name in ("jax", "tf"):
            other = fractions(out[name])
            if set(other) != set(torch_f):
                diff = math.inf
            else:
                diff = max(float(np.abs(other[k] - torch_f[k]).max()) for k in torch_f)
            self.agreement.setdefault(f"{arch} {name} vs torch", []).append(diff)

    def round_train(self, sides: dict[str, Side], r: int) -> None:
        a = self.args
        arch = a.train_architecture
        figure = self.figure(
            f"train_{arch}_jax_vs_faster",
            f"train {arch}, JAX vs the faster of TF and torch, batch {a.train_batch}, fp32",
            "img/s",
            0.8,
            "the faster of zoobot.tf on TensorFlow and zoobot.torch (Lightning)",
        )
        task = {
            "task": "train",
            "catalog": str(self.catalog),
            "architecture": arch,
            "batch_size": a.train_batch,
            "num_workers": a.num_workers,
            "warmup_steps": a.train_warmup,
            "steps": a.train_steps,
        }
        self._run(sides, r, self._steps(f"train {arch}", task, figure, None), figure)

    def start_sides(self, log: Path) -> dict[str, Side]:
        sides = super().start_sides(log)
        sides["jax"] = Side("jax", self.args.threads, self.scratch, log)
        return sides

    def report(self, hello: dict, idle_load: float, seconds: float) -> None:
        super().report(hello, idle_load, seconds)
        for figure in self.figures.values():
            if figure.ours:
                jax = statistics.median(figure.ours)
                for name, values in figure.peers.items():
                    if values:
                        peer = statistics.median(values)
                        print(
                            f"{figure.key}: {NAMES[name]} {peer:.2f} img/s, JAX {jax / peer:.2f}x"
                        )


def main() -> int:
    return Three(tf_vs_torch.parse_args()).main()


if __name__ == "__main__":
    sys.exit(main())
