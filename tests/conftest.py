"""Test setup: local MNIST files and quiet TensorFlow.

Tests read MNIST from `$SQ_KERAS_DATA_DIR`, defaulting to `../shared/data`
beside the repository (where CI puts the canonical files). A relative value is
made absolute here, against the directory pytest starts in, before any test
reads it: tests that start a process in another directory pass it on.
"""

import os

from absl import flags

# absl's TestCase helpers (create_tempdir) read flags that pytest never parses.
if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["SQ_KERAS_DATA_DIR"] = os.path.abspath(
    os.environ.get("SQ_KERAS_DATA_DIR") or os.path.join(ROOT, "..", "shared", "data")
)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_collection_modifyitems(config, items):
    # tf.test.TestCase.test_session is a deprecated helper, not a test.
    del config
    items[:] = [item for item in items if item.name != "test_session"]
