"""pytest fixtures for the GCS emulator.

Use them by declaring `pytest_plugins = ["tests.gcs.fixtures"]` in a test module
(or once in tests/conftest.py, for the whole suite).

- `gcs_emulator` (session): a started `GcsEmulator`; `host, port, env = gcs_emulator`.
  Pass `gcs_emulator.subprocess_env()` to any subprocess that uses gs:// (TF, Beam).
- `gcs_bucket`: a fresh, empty bucket name (tests share the emulator, not buckets).
- `gcs_python_env`: sets `python_env` in this process for the test (in-process
  google-cloud-storage / Beam GcsIO), and yields the emulator.
"""
from __future__ import annotations

import pytest

from tests.gcs.emulator import GcsEmulator


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    emulator = GcsEmulator(str(tmp_path_factory.mktemp("gcs-emulator")))
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def gcs_bucket(gcs_emulator) -> str:
    return gcs_emulator.create_bucket()


@pytest.fixture
def gcs_python_env(gcs_emulator, monkeypatch):
    for key, value in gcs_emulator.python_env.items():
        monkeypatch.setenv(key, value)
    yield gcs_emulator
