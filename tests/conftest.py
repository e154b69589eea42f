"""Test-wide setup. Runs before any test module imports TensorFlow.

TF_USE_LEGACY_KERAS must be set before TF loads (TFRS needs Keras 2), and the
CPU is split into 2 logical devices so distribution tests run real
multi-replica strategies: that split is only possible before TF initialises
its runtime, hence here.
"""
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

NUM_LOGICAL_CPUS = 2


def pytest_configure(config):
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * NUM_LOGICAL_CPUS
    )
