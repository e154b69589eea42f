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
    if _xdist_controller(config):
        return  # it runs no test: its workers each configure their own TF
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * NUM_LOGICAL_CPUS
    )


def _xdist_controller(config) -> bool:
    """True in the process that hands out tests to `pytest -n N` workers (make test)."""
    return config.getoption("dist", "no") != "no" and not hasattr(config, "workerinput")


def pytest_collection_modifyitems(config, items):
    """Modules with a `slow` test run first (each group keeps its order). With make test's
    `-n 2 --dist loadfile --no-loadscope-reorder`, workers take whole modules in this order,
    so the long ones are not left for the end, when one worker would run them alone."""
    slow = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module.__name__ not in slow)
