"""trainer.storage.preflight against a real GCS emulator and the real local disk."""
from __future__ import annotations

import os
import time

import pytest

from trainer.storage import PROBE_PREFIX, StorageError, preflight, split_gcs_uri

# The GCS emulator fixtures (gcs_emulator, gcs_bucket, gcs_python_env).
pytest_plugins = ["tests.gcs.fixtures"]


def _names(emulator, bucket):
    return sorted(b.name for b in emulator.client().list_blobs(bucket))


def test_split_gcs_uri():
    assert split_gcs_uri("gs://b/a/b/") == ("b", "a/b")
    assert split_gcs_uri("gs://b") == ("b", "")
    with pytest.raises(StorageError, match="no bucket name"):
        split_gcs_uri("gs:///x")


def test_writable_bucket_passes_and_leaves_no_probe(gcs_python_env, gcs_bucket):
    gcs_python_env.client().bucket(gcs_bucket).blob("keep/me").upload_from_string(b"x")
    preflight(f"gs://{gcs_bucket}/runs/1", need_write=True)
    preflight(f"gs://{gcs_bucket}", need_write=True)
    preflight(f"gs://{gcs_bucket}/keep", need_write=False)
    # Both write checks really uploaded a probe and deleted it by name.
    seen = [r for r in gcs_python_env.front.requests if f"/b/{gcs_bucket}/o" in r.path]
    uploads = [r for r in seen if r.method == "POST" and r.path.startswith("/upload/")]
    deletes = [r for r in seen if r.method == "DELETE" and PROBE_PREFIX in r.path]
    assert len(uploads) == 3 and len(deletes) == 2, seen  # 3 = keep/me + 2 probes
    assert any(f"/o/runs%2F1%2F{PROBE_PREFIX}" in r.path for r in deletes), deletes
    assert _names(gcs_python_env, gcs_bucket) == ["keep/me"]


@pytest.mark.parametrize("need_write", [True, False])
def test_missing_bucket_fails_fast_naming_it(gcs_python_env, need_write):
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        preflight("gs://no-such-bucket-seqrec/model", need_write=need_write)
    message = str(info.value)
    assert "gs://no-such-bucket-seqrec/model" in message
    assert "bucket gs://no-such-bucket-seqrec does not exist" in message
    print(f"missing bucket reported in {time.monotonic() - started:.2f} s")


def test_unreachable_endpoint_fails_within_timeout(monkeypatch, tmp_path):
    # A loopback port nobody listens on: connection refused, retried until the
    # deadline, then reported (instead of TF's minutes of retries).
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(StorageError, match="did not answer in time") as info:
        preflight("gs://some-bucket/model", need_write=True, timeout=2.0)
    assert "gs://some-bucket/model" in str(info.value)
    print(f"unreachable endpoint reported in {time.monotonic() - started:.2f} s")


def test_missing_credentials_named(monkeypatch, tmp_path):
    # Production path (no emulator): the credentials file the user pointed at is absent.
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(StorageError, match="no Google Cloud credentials found"):
        preflight("gs://some-bucket/model", need_write=True)


def test_local_dir_is_created_and_probed(tmp_path):
    target = tmp_path / "a" / "b"
    preflight(str(target), need_write=True)
    assert target.is_dir() and os.listdir(target) == []
    preflight(str(target), need_write=False)


def test_local_dir_under_a_file_fails_even_for_root(tmp_path):
    # chmod cannot stop root; a regular file as a parent stops everyone (ENOTDIR).
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="cannot create directory .*file/sub.*parent is a file"):
        preflight(str(blocker / "sub"), need_write=True)
    with pytest.raises(StorageError, match="a file is in the way"):
        preflight(str(blocker), need_write=True)


def test_local_read_of_missing_dir_fails(tmp_path):
    with pytest.raises(StorageError, match="does not exist"):
        preflight(str(tmp_path / "nope"), need_write=False)


def test_unsupported_scheme():
    with pytest.raises(StorageError, match="only local paths and gs://"):
        preflight("s3://bucket/x", need_write=False)
