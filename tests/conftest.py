"""Test-wide setup. Runs before any test module imports TensorFlow.

The `trainer` package sets TF_USE_LEGACY_KERAS (TFRS needs Keras 2) when it is
imported, as it does for users; the tests rely on that, not on a variable of
their own. The CPU is split into 2 logical devices so distribution tests run real
multi-replica strategies: that split is only possible before TF initialises
its runtime, hence here.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # quieter test output only

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import trainer  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS, as for any user)

NUM_LOGICAL_CPUS = 2


def pytest_configure(config):
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * NUM_LOGICAL_CPUS
    )
