"""The zoobot.tf tests run with Keras on TensorFlow (nox's tests-tf) and on JAX (tests-jax, with
`KERAS_BACKEND=jax`); `keras_backend.py` holds what they need of either backend directly."""

import sys
from pathlib import Path

# tests/tf holds the helper module `keras_backend` (pytest's importlib mode puts nothing on path).
sys.path.insert(0, str(Path(__file__).parent))
