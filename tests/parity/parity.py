"""The parity machinery: compare two backends' numbers, record every check, write the report.

A *check* compares an `actual` array (one backend) with a `reference` (the other backend, or the
NumPy float64 oracle) and records

- `max_abs`: max |actual - reference| over all elements;
- `max_rel`: the relative difference, in one of two senses (`relative=`):
  - `"scale"` (features, head outputs, weights): max |actual - reference| / max |reference|, the
    error relative to the scale of the quantity, as issue 8 asks for features and outputs; an
    elementwise ratio would blow up wherever a feature happens to cross zero;
  - `"elementwise"` (loss values and gradients): max over elements of
    |actual - reference| / |reference|; where the reference is exactly 0 (a question nobody
    answered) the actual value must be exactly 0 too, else the ratio is infinite;
  - `"abs"`: the tolerance applies to `max_abs` (metrics, accuracies);
- `tolerance` and `passed` (`max_rel <= tolerance`, or `max_abs` for `"abs"`; NaN fails; a shape
  mismatch fails with a note).

`compare` only measures; `Recorder.record` stores the checks of a test and raises `ParityFailure`
(an `AssertionError`) naming every failed one, so one test can record several quantities before
failing. `write_report` turns every recorded check (failed ones included) into `parity-report.md`
and `parity-report.json`; tests/parity/conftest.py calls it at the end of the session.

Keras runs zoobot.tf on one backend per process, so the session runs twice: with Keras on
TensorFlow (run "tf": it writes the report afresh), then on JAX (run "jax": it adds its checks to
the report the "tf" run wrote). A check's name holds its run's name where zoobot.tf computed it
(`keras_label`); `side_by_side` lines the runs up, with the torch-only checks, in one table.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

REPORT_DIR_ENV = "PARITY_REPORT_DIR"
REPORT_NAMES = ("parity-report.md", "parity-report.json")
RELATIVE_MODES = ("scale", "elementwise", "abs")
RUNS = {"tf": "TF", "jax": "JAX"}
"""Run name (zoobot.tf.runtime.name()) -> its column in the side-by-side table."""


def keras_label(run: str) -> str:
    """How check names call zoobot.tf in a run: "tf" on TensorFlow, "jax" on JAX."""
    if run not in RUNS:
        raise ValueError(f"unknown run {run!r}; expected one of {sorted(RUNS)}")
    return run


class ParityFailure(AssertionError):
    """One or more parity checks exceeded their tolerance."""


@dataclass
class Check:
    """One row of the parity table."""

    group: str
    name: str
    max_abs: float
    max_rel: float
    tolerance: float
    relative: str
    passed: bool
    status: str = ""
    note: str = ""
    test: str = ""
    n_values: int = 0
    run: str = ""

    def __post_init__(self):
        if not self.status:
            self.status = "pass" if self.passed else "FAIL"

    def describe(self) -> str:
        measured = self.max_abs if self.relative == "abs" else self.max_rel
        what = "max abs" if self.relative == "abs" else f"max rel ({self.relative})"
        text = (
            f"{self.group}/{self.name}: {what} {_fmt(measured)} vs tolerance {_fmt(self.tolerance)}"
            f" (max abs {_fmt(self.max_abs)})"
        )
        return text + (f" - {self.note}" if self.note else "")


def _as_array(values) -> np.ndarray:
    """A float64 NumPy copy of a NumPy array, torch tensor, TF tensor / Keras variable or scalar."""
    if hasattr(values, "detach"):  # torch
        values = values.detach().cpu().numpy()
    elif hasattr(values, "numpy") and not isinstance(values, np.ndarray):  # TF / Keras
        values = values.numpy()
    return np.asarray(values, dtype=np.float64)


def compare(
    name: str,
    actual,
    reference,
    tolerance: float,
    *,
    relative: str = "scale",
    group: str = "",
    note: str = "",
) -> Check:
    """Measure `actual` against `reference`; the returned `Check` says whether it passed."""
    if relative not in RELATIVE_MODES:
        raise ValueError(f"relative must be one of {RELATIVE_MODES}, got {relative!r}")
    a, r = _as_array(actual), _as_array(reference)
    if a.shape != r.shape:
        return Check(
            group,
            name,
            math.inf,
            math.inf,
            tolerance,
            relative,
            False,
            note=f"shape {a.shape} vs reference {r.shape}" + (f"; {note}" if note else ""),
            n_values=int(r.size),
        )
    if a.size == 0:
        return Check(group, name, 0.0, 0.0, tolerance, relative, True, note=note)
    diff = np.abs(a - r)
    if not np.all(np.isfinite(a) == np.isfinite(r)) or np.any(np.isnan(diff) & ~np.isnan(r)):
        max_abs = max_rel = math.nan
    else:
        finite = np.isfinite(r)
        diff = np.where(finite, diff, 0.0)
        max_abs = float(diff.max())
        if relative == "scale":
            scale = float(np.abs(np.where(finite, r, 0.0)).max())
            max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
        elif relative == "elementwise":
            zero = r == 0
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(zero, np.where(diff == 0, 0.0, math.inf), diff / np.abs(r))
            max_rel = float(ratio.max())
        else:
            scale = float(np.abs(np.where(finite, r, 0.0)).max())
            max_rel = max_abs / scale if scale > 0 else math.nan
    measured = max_abs if relative == "abs" else max_rel
    passed = bool(measured <= tolerance)  # NaN compares False: fails
    return Check(
        group, name, max_abs, max_rel, tolerance, relative, passed, note=note, n_values=int(r.size)
    )


def compare_equal(name: str, actual, reference, *, group: str = "", note: str = "") -> Check:
    """Exact equality of two non-numeric things (column names, ids): a 0-tolerance check."""
    same = list(actual) == list(reference) if not isinstance(actual, str) else actual == reference
    detail = note
    if not same:
        detail = f"{actual!r} != {reference!r}" + (f"; {note}" if note else "")
        if len(detail) > 300:
            detail = detail[:297] + "..."
    return Check(
        group,
        name,
        0.0 if same else math.inf,
        0.0 if same else math.inf,
        0.0,
        "abs",
        same,
        note=detail,
        n_values=len(reference),
    )


@dataclass
class Recorder:
    """The checks of a session; `record` stores them and fails the test past tolerance."""

    checks: list[Check] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    environment: dict = field(default_factory=dict)
    current_test: str = ""
    run: str = ""
    """The backend Keras runs zoobot.tf on in this session: "tf" or "jax" (`RUNS`)."""

    def record(self, *checks: Check) -> list[Check]:
        """Store `checks` (under the running test's id) and raise `ParityFailure` if any failed."""
        for check in checks:
            check.test = check.test or self.current_test
            check.run = check.run or self.run
            self.checks.append(check)
        failed = [c for c in checks if not c.passed]
        if failed:
            raise ParityFailure("; ".join(c.describe() for c in failed))
        return list(checks)

    def check(self, name: str, actual, reference, tolerance: float, **kwargs) -> Check:
        """`compare` then `record` in one call."""
        return self.record(compare(name, actual, reference, tolerance, **kwargs))[0]

    def note_outcome(self, group: str, name: str, status: str, note: str, test: str) -> None:
        """A row for a test that recorded no check (skipped, or failed before comparing)."""
        self.checks.append(
            Check(
                group,
                name,
                math.nan,
                math.nan,
                math.nan,
                "-",
                status != "FAIL",
                status=status,
                note=note,
                test=test,
                run=self.run,
            )
        )

    def summary(self) -> dict:
        counts: dict[str, int] = {}
        for check in self.checks:
            counts[check.status] = counts.get(check.status, 0) + 1
        return counts


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "inf"
    if value == 0:
        return "0"
    return f"{value:.2e}"


def _json_number(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def report_dir() -> Path:
    """Where the report goes: $PARITY_REPORT_DIR, else the current directory."""
    return Path(os.environ.get(REPORT_DIR_ENV) or os.getcwd())


def environment_info(extra: Mapping | None = None) -> dict:
    """Versions of everything whose numbers the report depends on."""
    from importlib import metadata

    info = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in (
        "numpy",
        "torch",
        "torchvision",
        "timm",
        "tensorflow-cpu",
        "tensorflow",
        "keras",
        "jax",
        "jaxlib",
        "safetensors",
        "zoobot-shared",
        "zoobot-data",
        "zoobot-torch",
        "zoobot-tf",
        "triton",
    ):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = None
    info["cpu_count"] = os.cpu_count()
    for var in ("OMP_NUM_THREADS", "TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL"):
        info[var] = os.environ.get(var)
    info.update(extra or {})
    return info


def _key(check: Check) -> tuple[str, str]:
    """The row of `check` in the side-by-side table: its name with its run's label as "keras"."""
    words = check.name.split(" ")
    if check.run in RUNS:
        words = ["keras" if w == check.run else w.replace(f"->{check.run}", "->keras")
                 for w in words]  # fmt: skip
        words = [w.replace(f"{check.run}->", "keras->") for w in words]
    return check.group, " ".join(words)


def _cell(check: Check | None) -> str:
    if check is None:
        return ""
    measured = check.max_abs if check.relative == "abs" else check.max_rel
    return f"{_fmt(measured)} {check.status}"


def side_by_side(checks: list[Check]) -> list[str]:
    """Markdown rows: each check once, with the torch-only value (torch vs the NumPy reference)
    and the value of each run (zoobot.tf on TensorFlow, on JAX) in columns of their own."""
    rows: dict[tuple[str, str], dict[str, Check]] = {}
    for check in checks:
        group, name = _key(check)
        column = "torch" if name.startswith("torch ") else check.run
        rows.setdefault((group, name), {})[column] = check
    lines = [
        "| group | check | tolerance | relative | torch | " + " | ".join(RUNS.values()) + " |",
        "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in RUNS) + " |",
    ]
    for (group, name), cells in rows.items():
        first = next(iter(cells.values()))
        values = [_cell(cells.get("torch"))] + [_cell(cells.get(run)) for run in RUNS]
        lines.append(
            f"| {group} | {name} | {_fmt(first.tolerance)} | {first.relative} | "
            + " | ".join(values)
            + " |"
        )
    return lines


def markdown_report(recorder: Recorder, runs: Mapping[str, Mapping] | None = None) -> str:
    """The report as Markdown: the runs, the side-by-side table, every check, the environment."""
    env = recorder.environment
    summary = recorder.summary()
    runs = runs or {}
    lines = [
        "# Parity report: zoobot.torch vs zoobot.tf (Keras on TensorFlow and on JAX)",
        "",
        ", ".join(f"{n} {status}" for status, n in sorted(summary.items())) + ". Runs: "
        + "; ".join(
            f"{RUNS.get(run, run)} generated {info.get('generated')}, {info.get('duration_s')} s"
            for run, info in runs.items()
        ) + ".",
        "",
        "Relative difference: `scale` = max|a-b| / max|reference| (features, outputs, weights); "
        "`elementwise` = max |a-b|/|reference|, exact zeros required where the reference is 0 "
        "(loss); `abs` = the tolerance bounds max|a-b|. In check names `keras` is zoobot.tf, "
        "whose columns are Keras on TensorFlow (TF) and on JAX.",
        "",
        "## Side by side",
        "",
        *side_by_side(recorder.checks),
        "",
        "## Every check",
        "",
        "| run | group | check | max abs diff | max rel diff | tolerance | relative | status | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for c in recorder.checks:
        note = c.note.replace("|", "\\|").replace("\n", " ")
        lines.append(
            f"| {RUNS.get(c.run, c.run)} | {c.group} | {c.name} | {_fmt(c.max_abs)} | "
            f"{_fmt(c.max_rel)} | {_fmt(c.tolerance)} | {c.relative} | {c.status} | {note} |"
        )
    lines += ["", "## Environment", "", "| item | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in env.items()]
    return "\n".join(lines) + "\n"


def _run_info(recorder: Recorder) -> dict:
    return {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "duration_s": round(time.time() - recorder.started, 1),
        "keras_backend": recorder.run,
    }


def json_report(recorder: Recorder, runs: Mapping[str, Mapping] | None = None) -> dict:
    checks = [{k: _json_number(v) for k, v in asdict(c).items()} for c in recorder.checks]
    return {
        "format": "zoobot-parity-report/2",
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "runs": dict(runs or {recorder.run: _run_info(recorder)}),
        "summary": recorder.summary(),
        "passed": all(c.passed for c in recorder.checks),
        "environment": recorder.environment,
        "checks": checks,
    }


def _from_json(value):
    return {"inf": math.inf, "-inf": -math.inf, None: math.nan}.get(value, value)


def merged(recorder: Recorder, directory: Path) -> tuple[Recorder, dict]:
    """`recorder` after the checks of the other runs in the report `directory` holds: a "jax" run
    adds its checks to the report a "tf" run wrote; a "tf" run starts the report afresh."""
    runs = {recorder.run: _run_info(recorder)}
    path = directory / REPORT_NAMES[1]
    if recorder.run == "tf" or not path.is_file():
        return recorder, runs
    earlier = json.loads(path.read_text(encoding="utf-8"))
    if earlier.get("format") != "zoobot-parity-report/2":
        return recorder, runs
    kept = [c for c in earlier["checks"] if c.get("run") != recorder.run]
    numbers = ("max_abs", "max_rel", "tolerance")
    old = [Check(**{k: _from_json(v) if k in numbers else v for k, v in c.items()}) for c in kept]
    combined = Recorder(
        old + recorder.checks, recorder.started, recorder.environment, run=recorder.run
    )
    environment = dict(earlier.get("environment") or {})
    environment.update({f"{k} ({recorder.run})": v for k, v in recorder.environment.items()
                        if environment.get(k) != v})  # fmt: skip
    combined.environment = environment
    previous = {k: v for k, v in (earlier.get("runs") or {}).items() if k != recorder.run}
    return combined, {**previous, **runs}


def write_report(recorder: Recorder, directory: str | os.PathLike | None = None) -> list[Path]:
    """Write parity-report.md and parity-report.json into `directory` (default `report_dir()`)."""
    directory = Path(directory) if directory is not None else report_dir()
    directory.mkdir(parents=True, exist_ok=True)
    recorder, runs = merged(recorder, directory)
    md, js = (directory / name for name in REPORT_NAMES)
    md.write_text(markdown_report(recorder, runs), encoding="utf-8")
    js.write_text(json.dumps(json_report(recorder, runs), indent=2) + "\n", encoding="utf-8")
    return [md, js]


def all_passed(checks: Iterable[Check]) -> bool:
    return all(c.passed for c in checks)


def _randomised(name: str, values: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """New values for a tensor whose initialisation would hide a wrong mapping, else None.

    Constant tensors (norm scales of 1, biases of 0, layer scales of 1e-6, zero-initialised last
    BatchNorm of residual blocks) make a swapped or transposed mapping invisible; running
    statistics of 0 and 1 make BatchNorm's moving mean/variance mapping invisible.
    """
    lowered = name.lower()
    if "num_batches_tracked" in lowered or values.dtype.kind not in "f":
        return None
    if "running_var" in lowered or "moving_variance" in lowered:
        return rng.uniform(0.5, 2.0, values.shape)
    if "running_mean" in lowered or "moving_mean" in lowered:
        return rng.normal(0.0, 0.2, values.shape)
    flat = values.ravel()
    if flat.size and np.all(flat == flat[0]):
        if flat[0] == 0:
            return rng.normal(0.0, 0.1 if values.ndim == 1 else 0.02, values.shape)
        return rng.uniform(0.5, 1.5, values.shape)
    return None


def randomise_torch(module, seed: int = 0):
    """Give every constant-initialised parameter and BatchNorm statistic of `module` random values."""
    import torch

    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            new = _randomised(name, tensor.detach().cpu().numpy(), rng)
            if new is not None:
                tensor.copy_(torch.from_numpy(new.astype(np.float32)))
    return module


def randomise_keras(model, seed: int = 0):
    """The same for a Keras model (trainable and non-trainable variables)."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        values = np.asarray(variable.numpy())
        new = _randomised(variable.path, values, rng)
        if new is not None:
            variable.assign(new.astype(values.dtype))
    return model


def calibrate_batchnorm_torch(module, images) -> None:
    """Set every BatchNorm's running statistics to those of `images` (N, C, H, W), as a trained
    network has them: one train-mode pass with a cumulative average, then eval mode.

    A deep network with random statistics (mean and variance unrelated to what reaches them) grows
    its activations block after block (to ~1e5 in MaxViT-Base, with the float32 rounding growing
    alike), so a 1e-4 check would measure that blow-up instead of the port. Calibrated statistics
    are still far from 0 and 1, so a swapped or transposed mapping still shows.
    """
    import torch

    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative: after one pass, exactly the batch's statistics
    module.train()
    with torch.no_grad():
        module(torch.as_tensor(np.asarray(images, np.float32)))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    module.eval()


def calibrate_batchnorm_keras(model, images) -> None:
    """The same for a Keras model and channels-last `images`: one training pass with momentum 0
    (zoobot.tf's TorchBatchNorm keeps torch's unbiased running variance)."""
    import keras

    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    frozen = [norm.name for norm in norms if not norm.trainable]
    if frozen:  # Keras runs a frozen BatchNorm in inference mode: nothing would be calibrated
        raise ValueError(f"calibrate before freezing: {frozen[:5]} are not trainable")
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.momentum = 0.0
    model(np.asarray(images, np.float32), training=True)
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum


# The session's recorder: conftest.py fills `environment`, tests record through the `parity`
# fixture, and pytest_sessionfinish writes the report.
RECORDER = Recorder()
