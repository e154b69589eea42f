"""Storage preflight: fail in seconds, with a clear cause, before training starts.

TensorFlow's gs:// filesystem handles a bad model_dir badly: with a missing bucket,
tf.io.gfile.makedirs and CheckpointManager.save never return (TF 2.21, measured
against the emulator: ~240 bucket lookups a second, forever), and transient-looking
errors are retried for minutes before surfacing deep inside a save. The trainer calls
`preflight(uri, need_write)` on a gs:// data_dir (read) and on every output
directory (write) first, before any replica or worker starts:
for gs:// it asks google-cloud-storage, with bounded timeouts and retries, to
list the prefix (read) or to write and delete a small probe object under it
(write, which is what checkpointing needs: CheckpointManager deletes old
checkpoints); for a local path it creates the directory and writes a probe file.

Usage:
    preflight("gs://bucket/runs/1", need_write=True)   # raises StorageError
"""
from __future__ import annotations

import errno
import os
import tempfile
import uuid

GCS_SCHEME = "gs://"
PROBE_PREFIX = ".seqrec-preflight-"


class StorageError(RuntimeError):
    """A data_dir/model_dir that cannot be used; the message names URI and cause."""


def split_gcs_uri(uri: str) -> tuple[str, str]:
    """"gs://bucket/a/b/" -> ("bucket", "a/b"). Raises StorageError when malformed."""
    if not uri.startswith(GCS_SCHEME):
        raise StorageError(f"{uri!r} is not a gs:// URI")
    bucket, _, prefix = uri[len(GCS_SCHEME):].partition("/")
    if not bucket:
        raise StorageError(f"{uri!r} has no bucket name (expected gs://BUCKET/PREFIX)")
    return bucket, prefix.strip("/")


def preflight(uri: str, need_write: bool, timeout: float = 30.0, flag: str = "") -> None:
    """Checks that `uri` (a local path or gs://bucket/prefix) is usable: the one
    writability probe of the trainer.

    Args:
      uri: the data_dir or an output directory as given on the command line.
      need_write: also check that objects/files can be created and deleted there.
      timeout: upper bound in seconds for the whole gs:// check, retries included.
      flag: the flag that gave `uri`; the error then starts with "--flag=uri: ".
    Raises:
      StorageError: naming the URI (and bucket) and the likely cause.
    """
    try:
        if uri.startswith(GCS_SCHEME):
            _preflight_gcs(uri, need_write, timeout)
        elif "://" in uri:
            raise StorageError(f"{uri!r}: only local paths and gs://BUCKET/PREFIX are supported")
        else:
            _preflight_local(uri, need_write)
    except StorageError as e:
        if not flag:
            raise
        raise StorageError(f"--{flag}={uri}: {e}") from e.__cause__


# ---------------------------------------------------------------------------- gs://
# google-cloud-storage is imported where gs:// is used: it comes with the `gcp` extra,
# which a trainer on local paths does not need.
def _gcs_client():
    import google.auth.exceptions
    from google.cloud import storage

    try:
        # project=None: reading/writing objects needs no project, and guessing one
        # would be another slow, failure-prone lookup.
        return storage.Client(project=None)
    except google.auth.exceptions.DefaultCredentialsError as e:
        raise StorageError(
            "no Google Cloud credentials found (run `gcloud auth application-default "
            f"login`, or set GOOGLE_APPLICATION_CREDENTIALS to a key file): {e}"
        ) from e


def _explain(uri: str, bucket: str, action: str, error: Exception) -> StorageError:
    """Maps a google-cloud-storage error to a StorageError with the likely cause."""
    import google.auth.exceptions
    from google.api_core import exceptions as api

    if isinstance(error, api.NotFound):
        cause = (
            f"bucket gs://{bucket} does not exist (create it with "
            f"`gcloud storage buckets create gs://{bucket}`, or fix the URI)"
        )
    elif isinstance(error, api.Forbidden):
        cause = (
            f"permission denied on bucket gs://{bucket}: the credentials in use lack "
            f"{'storage.objects.create/delete' if action != 'list' else 'storage.objects.list'}"
            " (e.g. roles/storage.objectAdmin on the bucket)"
        )
    elif isinstance(error, (api.Unauthorized, google.auth.exceptions.RefreshError)):
        cause = (
            "credentials were rejected or could not be refreshed (expired login? run "
            "`gcloud auth application-default login`)"
        )
    elif isinstance(error, google.auth.exceptions.DefaultCredentialsError):
        cause = "no Google Cloud credentials found (set GOOGLE_APPLICATION_CREDENTIALS)"
    elif isinstance(error, (api.RetryError, api.ServerError, ConnectionError, TimeoutError)) or (
        "Connection" in type(error).__name__ or "Timeout" in type(error).__name__
    ):
        cause = f"Cloud Storage did not answer in time (network or outage?): {error}"
    else:
        cause = f"{type(error).__name__}: {error}"
    return StorageError(f"cannot {action} {uri}: {cause}")


def _preflight_gcs(uri: str, need_write: bool, timeout: float) -> None:
    from google.api_core.exceptions import GoogleAPIError
    from google.auth.exceptions import GoogleAuthError
    from google.cloud.storage.retry import DEFAULT_RETRY

    bucket_name, prefix = split_gcs_uri(uri)
    client = _gcs_client()
    bucket = client.bucket(bucket_name)
    # Bounded: each HTTP call may take `timeout`; the retry loop (transient 429/5xx
    # and connection errors only) gives up after `timeout` seconds in total.
    retry = DEFAULT_RETRY.with_deadline(timeout)
    call = {"timeout": (min(10.0, timeout), timeout), "retry": retry}
    errors = (GoogleAPIError, GoogleAuthError, OSError)

    try:
        # Listing proves the bucket exists and is readable, without needing the
        # bucket-metadata permission that object-level roles do not grant.
        list(client.list_blobs(bucket, prefix=prefix + "/" if prefix else None,
                               max_results=1, **call))
    except errors as e:
        raise _explain(uri, bucket_name, "list", e) from e
    if not need_write:
        return

    # A unique name, so concurrent workers never collide and a stale probe left by
    # a killed run is not mistaken for ours.
    name = PROBE_PREFIX + uuid.uuid4().hex
    if prefix:
        name = f"{prefix}/{name}"
    blob = bucket.blob(name)
    try:
        blob.upload_from_string(b"probe", if_generation_match=0, **call)
    except errors as e:
        raise _explain(uri, bucket_name, "write to", e) from e
    try:
        blob.delete(**call)
    except errors as e:
        raise _explain(uri, bucket_name, f"delete the probe gs://{bucket_name}/{name} in", e) from e


# ---------------------------------------------------------------------------- local
def _preflight_local(path: str, need_write: bool) -> None:
    if not need_write:
        if not os.path.isdir(path):
            raise StorageError(f"{path!r} does not exist or is not a directory")
        try:
            os.listdir(path)
        except OSError as e:
            raise StorageError(f"cannot read directory {path!r}: {e.strerror}") from e
        return
    try:
        os.makedirs(path, exist_ok=True)
    except FileExistsError as e:
        raise StorageError(f"cannot use {path!r} as a directory: a file is in the way") from e
    except OSError as e:
        hint = " (a parent is a file, not a directory)" if e.errno == errno.ENOTDIR else ""
        raise StorageError(f"cannot create directory {path!r}: {e.strerror}{hint}") from e
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=PROBE_PREFIX) as f:
            f.write(b"probe")
            f.flush()
    except OSError as e:
        raise StorageError(f"cannot write to directory {path!r}: {e.strerror}") from e
