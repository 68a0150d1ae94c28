"""The test matrix: one session per package with only what that package needs installed.

`nox -t tests` runs every test session (the command README.md and .ci/run give). Environments are
reused between runs (`reuse_venv`), so a second local run only reinstalls the project's packages.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nox

nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).parent
SHARED = str(ROOT / "packages" / "zoobot-shared")
DATA = str(ROOT / "packages" / "zoobot-data")
MODELS = str(ROOT / "packages" / "zoobot-models")
TORCH = str(ROOT / "packages" / "zoobot-torch")
TF = str(ROOT / "packages" / "zoobot-tf")
# The torch build CI machines hold on local disk (a CUDA build that runs on the CPU); pinning it
# keeps pip from fetching several GB of a newer release.
TORCH_PINS = ["torch==2.14.1", "torchvision==0.29.1"]
# TensorFlow 2.21 with Keras 3: the wheel runs on the CPU when no GPU is present.
TF_PINS = ["tensorflow==2.21.0"]
# JAX for CPU, what zoobot-tf[jax] installs (Keras on JAX: KERAS_BACKEND=jax).
JAX_PINS = ["jax==0.10.2", "jaxlib==0.10.2"]
# What tests-jax runs inside `nox -t tests`: the Keras tests whose code differs by backend (the
# loss, the tree head and its training step, depthwise and patch convolutions, the command's
# --backend, fast paths) and the contract tests of loading, predicting, finetuning and learning.
# The whole Keras suite takes about 3x the TensorFlow run on JAX, more than CI's time allows with
# the other sessions: `nox -s tests-jax -- tests/tf tests/contract` runs it.
JAX_TESTS = [
    "tests/tf/test_loss.py",
    "tests/tf/test_tree.py",
    "tests/tf/test_depthwise.py",
    "tests/tf/test_patch_conv.py",
    "tests/tf/test_cli.py",
    "tests/tf/test_fast_paths.py",
    "tests/contract/test_pretrained.py",
    "tests/contract/test_predict.py",
    "tests/contract/test_preprocessing.py",
    "tests/contract/test_training.py",
    "tests/contract/test_learning.py",
]
# The parity checks zoobot.tf computes, run a second time with Keras on JAX (preprocessing is
# tf.data on either backend, and the machinery tests are the report's own).
PARITY_JAX = [
    "tests/parity/test_loss_parity.py",
    "tests/parity/test_encoder_parity.py",
    "tests/parity/test_prediction_parity.py",
    "tests/parity/test_training_parity.py",
]
# The original Zoobot, measured against ours in the benchmarks (its own environment: it is a
# regular `zoobot` package, which would shadow our PEP 420 namespace).
PEER = ["zoobot[pytorch]==2.9.0"]
TEST_DEPS = ["pytest>=8", "hypothesis>=6"]
# CI's CPU may be any x86-64 from AVX2 up: the tests whose numbers or code paths depend on oneDNN's
# kernels run a second time with oneDNN (torch's and TensorFlow's) and ATen held to AVX2, as on an
# AMD Zen 3 or Intel Haswell, in the same environment. (TensorFlow's own CPU checks still see the
# real CPU: bf16 ops forced past zoobot's bf16 check can crash there, unlike on a real AVX2 CPU.)
AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}

ABSENT_CHECK = """
import importlib.util, sys
present = [m for m in sys.argv[1:] if importlib.util.find_spec(m) is not None]
if present:
    sys.exit(f"this session must run without {present}, but they are importable")
print("confirmed absent:", ", ".join(sys.argv[1:]))
"""


def assert_absent(session: nox.Session, *modules: str) -> None:
    """Fail the session if a framework the package must not need is importable."""
    session.run("python", "-c", ABSENT_CHECK, *modules, silent=False)


@nox.session(tags=["tests"])
def lint(session: nox.Session) -> None:
    """ruff lint and format check over the whole tree."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(name="tests-shared", tags=["tests"])
def tests_shared(session: nox.Session) -> None:
    """zoobot-shared alone: numpy, scipy, pandas, pyarrow; no deep-learning framework."""
    session.install(SHARED, *TEST_DEPS)
    assert_absent(session, "torch", "tensorflow")
    session.run("pytest", "tests/shared", *session.posargs)


@nox.session(name="tests-data", tags=["tests"])
def tests_data(session: nox.Session) -> None:
    """zoobot-data with its extras (GalSim survey, Hubble Deep Field sample, true-parameter
    reference); no DL framework."""
    session.install(SHARED, f"{DATA}[synthetic,hubble,reference]", *TEST_DEPS)
    assert_absent(session, "torch", "tensorflow")
    session.run("pytest", "tests/data", *session.posargs)


@nox.session(name="tests-models", tags=["tests"])
def tests_models(session: nox.Session) -> None:
    """zoobot-models: the Hub layout, tasks, settings, runner and command line; no DL framework."""
    session.install(SHARED, DATA, MODELS, "pillow>=10", *TEST_DEPS)
    assert_absent(session, "torch", "tensorflow", "keras")
    session.run("pytest", "tests/models", *session.posargs)


@nox.session(name="tests-torch", tags=["tests"])
def tests_torch(session: nox.Session) -> None:
    """zoobot-torch with PyTorch, Lightning and timm; TensorFlow must be absent."""
    session.install(*TORCH_PINS, SHARED, f"{DATA}[synthetic]", MODELS, TORCH, *TEST_DEPS)
    assert_absent(session, "tensorflow")
    # One intra-op thread per process: on 2 cores, DataLoader workers and DDP ranks otherwise
    # oversubscribe the CPU and the suite runs several times slower.
    env = {"OMP_NUM_THREADS": "1", "ZOOBOT_BACKEND": "torch"}
    session.run("pytest", "tests/torch", "tests/contract", *session.posargs, env=env)
    session.run(
        "pytest",
        "tests/torch/test_fusion.py",
        "tests/torch/test_fast_paths.py",
        "tests/torch/test_depthwise.py",
        "tests/contract/test_predict.py",
        *session.posargs,
        env={**env, **AVX2_ONLY},
    )


@nox.session(name="tests-tf", tags=["tests"])
def tests_tf(session: nox.Session) -> None:
    """zoobot-tf with TensorFlow and Keras 3; torch must be absent."""
    session.install(*TF_PINS, SHARED, f"{DATA}[synthetic]", MODELS, TF, *TEST_DEPS)
    assert_absent(session, "torch")
    env = {"OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "ZOOBOT_BACKEND": "tf"}
    session.run("pytest", "tests/tf", "tests/contract", *session.posargs, env=env)
    session.run(
        "pytest",
        "tests/tf/test_fast_paths.py",
        "tests/tf/test_predict.py",
        "tests/tf/test_training.py",
        "tests/contract/test_predict.py",
        *session.posargs,
        env={**env, **AVX2_ONLY},
    )


@nox.session(name="tests-jax", tags=["tests"])
def tests_jax(session: nox.Session) -> None:
    """zoobot-tf with Keras on JAX (`KERAS_BACKEND=jax`); torch must be absent. TensorFlow is
    installed only because the input pipeline is `tf.data` (zoobot.tf.data)."""
    session.install(
        *TF_PINS, *JAX_PINS, SHARED, f"{DATA}[synthetic]", MODELS, f"{TF}[jax]", *TEST_DEPS
    )
    assert_absent(session, "torch")
    env = {
        "OMP_NUM_THREADS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "KERAS_BACKEND": "jax",
        "ZOOBOT_BACKEND": "jax",
    }
    session.run("pytest", *(session.posargs or JAX_TESTS), env=env)


@nox.session(tags=["tests"])
def parity(session: nox.Session) -> None:
    """Both frameworks in one environment: the same inputs and weights give the same numbers.

    triton (pulled in by torch) segfaults when its native module loads after TensorFlow's, so this
    environment uninstalls it (nothing here compiles GPU kernels); tests/parity/conftest.py also
    blocks its import. JAX is installed too: Keras picks its backend once per process, so the
    checks of zoobot.tf run twice, with Keras on TensorFlow and then on JAX (torch, TensorFlow and
    jaxlib share that process), and the report puts the two runs side by side. The report goes to
    parity-report.md and parity-report.json; the README code blocks and the demo (quick mode) are
    tested here as well.
    """
    session.install(
        *TORCH_PINS,
        *TF_PINS,
        *JAX_PINS,
        SHARED,
        f"{DATA}[synthetic,hubble,reference]",
        MODELS,
        TORCH,
        f"{TF}[jax]",
        "matplotlib>=3.8",
        *TEST_DEPS,
    )
    session.run_install("python", "-m", "pip", "uninstall", "--yes", "--quiet", "triton")
    report = {"PARITY_REPORT_DIR": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    # The README's code blocks and the demo's quick mode need both frameworks too, so they run here.
    session.run(
        "pytest",
        "tests/parity",
        "tests/readme",
        "tests/demo",
        *session.posargs,
        env={**report, "KERAS_BACKEND": "tensorflow"},
    )
    # The checks zoobot.tf computes, with Keras on JAX; added to the report of the run above.
    session.run(
        "pytest",
        *PARITY_JAX,
        "-k",
        # torch alone (test_torch_*): the first run's rows; torch→Keras loading of every CI-tier
        # architecture is the first run's too (the same conversion code), Keras→torch runs here
        "not test_torch_",
        *session.posargs,
        env={**report, "KERAS_BACKEND": "jax"},
    )
    # Its report goes to the session's scratch folder: parity-report.* is the full run's.
    session.run(
        "pytest",
        "tests/parity/test_prediction_parity.py",
        "tests/parity/test_training_parity.py",
        *session.posargs,
        env={
            "PARITY_REPORT_DIR": session.create_tmp(),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "KERAS_BACKEND": "tensorflow",
            **AVX2_ONLY,
        },
    )


@nox.session(name="bench-peer")
def bench_peer(session: nox.Session) -> None:
    """The original zoobot 2.9.0 with the same torch build, for the benchmarks' peer figures."""
    session.install(*TORCH_PINS, *PEER)
    session.run("python", "-c", "import zoobot.pytorch; print('peer ready:', zoobot.__file__)")


def parity_python(session: nox.Session) -> str:
    """The parity environment's Python (both frameworks, every package), created if missing.

    The demo and the benchmarks need exactly what the parity session installs, so they share its
    environment instead of building another several-GB one.
    """
    session.run(sys.executable, "-m", "nox", "-s", "parity", "--install-only", external=True)
    return str(ROOT / ".nox" / "parity" / "bin" / "python")


@nox.session(venv_backend="none")
def demo(session: nox.Session) -> None:
    """The whole story on the synthetic survey, in demo-output/ (report.md lists what it made)."""
    python = parity_python(session)
    session.run(python, "demo/run_demo.py", "--out", "demo-output", *session.posargs, external=True)


@nox.session(venv_backend="none")
def science(session: nox.Session) -> None:
    """The larger experiment (8,000 galaxies at 96 px, pretrained by zoobot.torch and by zoobot.tf),
    its per-question tables in science-output/report.md; not part of `nox -t tests`."""
    python = parity_python(session)
    session.run(
        python,
        "demo/run_demo.py",
        "--science",
        "--out",
        "science-output",
        *session.posargs,
        external=True,
    )


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """Every benchmark beside its peer in one table: bench-output/bench-table.md and .json."""
    python = parity_python(session)
    session.run(sys.executable, "-m", "nox", "-s", "bench-peer", "--install-only", external=True)
    peer = ROOT / ".nox" / "bench-peer" / "bin" / "python"
    session.run(
        python,
        "benchmarks/run_all.py",
        "--out",
        "bench-output",
        "--peer-python",
        str(peer),
        *session.posargs,
        external=True,
    )
