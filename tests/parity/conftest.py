"""One process with both frameworks: crash-proofing, full float32 precision, the report.

TensorFlow and torch in one process: torch pulls in `triton` (its GPU kernel compiler), and triton's
native module segfaults when it loads after TensorFlow's (both bundle LLVM; the second copy's static
initialisers collide). Nothing here compiles GPU kernels, so the parity environment uninstalls
triton, and this file also blocks its import before anything else runs: with
`sys.modules["triton"] = None`, `import triton` raises ImportError (which torch treats as "triton
not available") and `importlib.util.find_spec("triton")` returns None, so the session is safe
even where triton is installed. Users who need both frameworks in one process can do the same as
the first lines of their program (or `pip uninstall triton` on CPU-only machines).

Reduced precision is turned off on both sides before any check runs: TF32 matmuls/convolutions
(torch.backends.*.allow_tf32, torch's float32 matmul precision "highest", TensorFlow's
`enable_tensor_float_32_execution(False)`, and on JAX `jax_default_matmul_precision` "highest").
The report records these settings and every version.

zoobot.tf runs on the backend `KERAS_BACKEND` names (TensorFlow unless set): the nox session runs
these tests once per backend, the JAX run in the same environment (torch, TensorFlow and jaxlib
share a process; TensorFlow reads the data there) and `parity.write_report` lines the runs up.
"""

from __future__ import annotations

import os
import sys
import zlib
from pathlib import Path

# Must come before any import that could import torch (see the module docstring).
sys.modules.setdefault("triton", None)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # parity tests never touch the network

# tests/parity holds the machinery module `parity` (pytest's importlib mode puts nothing on path).
sys.path.insert(0, str(Path(__file__).parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import parity  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import torch  # noqa: E402

from zoobot.tf import runtime  # noqa: E402

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.set_float32_matmul_precision("highest")
tf.config.experimental.enable_tensor_float_32_execution(False)
if runtime.on_jax():
    import jax

    jax.config.update("jax_default_matmul_precision", "highest")

KERAS = parity.keras_label(runtime.name())
"""How check names call zoobot.tf in this run: "tf" or "jax"."""

GROUPS = {
    "test_loss_parity": "loss",
    "test_preprocessing_parity": "preprocessing",
    "test_encoder_parity": "encoders",
    "test_prediction_parity": "predictions",
    "test_training_parity": "training",
    "test_machinery": "machinery",
}


def _precision_settings() -> dict:
    settings = {
        "triton_blocked": sys.modules.get("triton", "imported") is None,
        "torch_allow_tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "torch_allow_tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "torch_float32_matmul_precision": torch.get_float32_matmul_precision(),
        "tf_tensor_float_32_execution": tf.config.experimental.tensor_float_32_execution_enabled(),
        "torch_threads": torch.get_num_threads(),
        "keras_backend": keras.backend.backend(),
    }
    if runtime.on_jax():
        import jax

        settings["jax_default_matmul_precision"] = jax.config.jax_default_matmul_precision
        settings["jax_enable_x64"] = jax.config.jax_enable_x64
    return settings


parity.RECORDER.environment = parity.environment_info(_precision_settings())
parity.RECORDER.run = KERAS


@pytest.fixture
def recorder(request) -> parity.Recorder:
    """The session's parity recorder, labelled with the running test."""
    parity.RECORDER.current_test = request.node.nodeid
    yield parity.RECORDER
    parity.RECORDER.current_test = ""


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A NumPy generator seeded per test (stable across runs and test selections)."""
    seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(seed)
    keras.utils.set_random_seed(seed)
    return np.random.default_rng(seed)


def _group(item) -> str:
    return GROUPS.get(Path(str(item.fspath)).stem, Path(str(item.fspath)).stem)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Give the report a row for a parity test that was skipped or failed without recording."""
    outcome = yield
    report = outcome.get_result()
    if _group(item) == "machinery":
        return
    recorded = any(c.test == item.nodeid for c in parity.RECORDER.checks)
    if report.skipped and call.when in ("setup", "call"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        parity.RECORDER.note_outcome(_group(item), item.name, "skipped", str(reason), item.nodeid)
    elif report.failed and not recorded and call.when in ("setup", "call"):
        message = str(call.excinfo.value).strip().splitlines() if call.excinfo else ["failed"]
        text = f"{call.excinfo.typename}: {message[0] if message else ''}"[:300]
        parity.RECORDER.note_outcome(_group(item), item.name, "FAIL", text, item.nodeid)


def pytest_sessionfinish(session, exitstatus):
    """Write parity-report.md and parity-report.json, failed checks included."""
    if not parity.RECORDER.checks:
        return
    paths = parity.write_report(parity.RECORDER)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"parity report: {', '.join(str(p) for p in paths)}")


@pytest.fixture(scope="session")
def survey(tmp_path_factory):
    """A small synthetic Galaxy Zoo survey (decals_dr5 votes, 64 px JPEGs), with a `split` column.

    160 train and 80 validation galaxies; `bright` (0/1) is whether the galaxy is brighter than the
    median (a label a short finetune learns), for the training check.
    """
    from zoobot.data.synthetic import make_survey

    catalog = make_survey(
        240, tmp_path_factory.mktemp("survey"), "decals_dr5", image_size=64, seed=0, workers=2,
        progress=False,
    )  # fmt: skip
    catalog["split"] = ["train"] * 160 + ["validation"] * 80
    magnitude = catalog["true_magnitude"]
    catalog["bright"] = (magnitude < magnitude.median()).astype(np.int64)
    return catalog
