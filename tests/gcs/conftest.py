"""Makes the GCS emulator fixtures available under tests/gcs/.

Other test directories get them once tests/conftest.py registers the plugin
(`pytest_plugins = ["tests.gcs.fixtures"]`); until then they import them.
"""
from tests.gcs.fixtures import gcs_bucket, gcs_emulator, gcs_python_env  # noqa: F401
