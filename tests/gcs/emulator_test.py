"""The GCS test foundation works for every client the project uses, for real.

Each test talks to fake-gcs-server through the clients' own production code
paths: google-cloud-storage and Beam's GcsIO via STORAGE_EMULATOR_HOST, and
TensorFlow's C++ gs:// filesystem via HTTPS_PROXY + the session CA. Results are
cross-checked with a different client than the one that wrote them, so a client
silently writing to the local disk (or nowhere) would fail.

TensorFlow runs in subprocesses: its GCS settings are read once per process.
"""
from __future__ import annotations

import gzip
import io
import json

import pytest

from tests.gcs.proxy import FAKE_TOKEN, add_batch_content_ids

pytest_plugins = ["tests.gcs.fixtures"]


def _names(gcs_emulator, bucket: str, prefix: str = "") -> list[str]:
    return sorted(b.name for b in gcs_emulator.client().list_blobs(bucket, prefix=prefix))


def _through_tls_proxy(gcs_emulator, bucket: str) -> list:
    return [r for r in gcs_emulator.front.requests if r.host != "plain" and bucket in r.path]


def test_fixture_env_routes_every_client(gcs_emulator):
    host, port, env = gcs_emulator
    assert host == "127.0.0.1" and port > 0
    assert env["STORAGE_EMULATOR_HOST"] == f"http://127.0.0.1:{port}"
    assert env["HTTPS_PROXY"] == env["STORAGE_EMULATOR_HOST"]
    with open(env["CURL_CA_BUNDLE"]) as f:
        assert "BEGIN CERTIFICATE" in f.read()
    with open(env["GOOGLE_APPLICATION_CREDENTIALS"]) as f:
        assert json.load(f)["type"] == "authorized_user"
    # TF's fail-fast knobs, with the names TF's gcs_file_system.cc reads.
    assert env["GCS_RETRY_CONFIG_MAX_RETRIES"] == "3"
    assert env["NO_GCE_CHECK"] == "true"


def test_storage_client_round_trip(gcs_emulator, gcs_bucket):
    bucket = gcs_emulator.client().bucket(gcs_bucket)
    bucket.blob("dir/a.txt").upload_from_string(b"alpha")
    bucket.blob("dir/b.txt").upload_from_string(b"beta")
    bucket.blob("other.txt").upload_from_string(b"x")

    fresh = gcs_emulator.client()  # no client-side state shared with the writer
    assert fresh.bucket(gcs_bucket).blob("dir/b.txt").download_as_bytes() == b"beta"
    assert _names(gcs_emulator, gcs_bucket, "dir/") == ["dir/a.txt", "dir/b.txt"]
    # Generation preconditions are enforced, as on real GCS.
    from google.api_core.exceptions import PreconditionFailed

    with pytest.raises(PreconditionFailed):
        bucket.blob("other.txt").upload_from_string(b"y", if_generation_match=0)


def test_batch_parts_get_content_ids_only_where_missing():
    body = (
        b"--XYZ\nContent-Type: application/http\n\nDELETE /a HTTP/1.1\r\n\r\n"
        b"--XYZ\nContent-ID: <mine>\nContent-Type: application/http\n\nDELETE /b HTTP/1.1\r\n\r\n"
        b"--XYZ--\n"
    )
    fixed = add_batch_content_ids(body, 'multipart/mixed; boundary="XYZ"')
    assert fixed.count(b"Content-ID:") == 2
    assert b"--XYZ\nContent-ID: <seqrec+1>\nContent-Type: application/http\n\nDELETE /a" in fixed
    assert b"Content-ID: <mine>" in fixed and fixed.endswith(b"--XYZ--\n")


def test_front_forwards_chunked_uploads_and_refuses_other_hosts(gcs_emulator, gcs_bucket):
    import http.client

    conn = http.client.HTTPConnection(gcs_emulator.host, gcs_emulator.port, timeout=30)
    # A chunked request body (as curl sends when the length is unknown) arrives whole.
    conn.request(
        "POST", f"/upload/storage/v1/b/{gcs_bucket}/o?uploadType=media&name=chunked.bin",
        body=iter([b"abc", b"defgh"]), encode_chunked=True,
        headers={"Transfer-Encoding": "chunked", "Content-Type": "application/octet-stream"},
    )
    response = conn.getresponse()
    assert response.status == 200 and json.loads(response.read())["size"] == "8"
    # Same keep-alive connection: the proxy read exactly one request's bytes.
    conn.request("GET", f"/download/storage/v1/b/{gcs_bucket}/o/chunked.bin?alt=media")
    assert conn.getresponse().read() == b"abcdefgh"
    conn.close()

    conn = http.client.HTTPConnection(gcs_emulator.host, gcs_emulator.port, timeout=30)
    conn.request("CONNECT", "example.com:443")
    assert conn.getresponse().status == 403
    conn.close()


def test_storage_client_batch_delete(gcs_emulator, gcs_bucket):
    client = gcs_emulator.client()
    bucket = client.bucket(gcs_bucket)
    for i in range(3):
        bucket.blob(f"x/{i}").upload_from_string(b"%d" % i)
    # google-cloud-storage 3.x sends batch parts without Content-ID; without the
    # front's fix fake-gcs-server skips them and this batch answers "not multi-part".
    with client.batch(raise_exception=True) as batch:
        for i in range(3):
            bucket.delete_blob(f"x/{i}")
    assert len(batch._responses) == 3
    assert all(200 <= r.status_code < 300 for r in batch._responses)
    assert _names(gcs_emulator, gcs_bucket) == []


def test_beam_filesystems_in_process(gcs_python_env, gcs_bucket):
    """Beam's FileSystems on gs:// in the pytest process, with no credential stall."""
    import time

    from apache_beam.internal.gcp import auth
    from apache_beam.io.filesystems import FileSystems

    # Beam caches credentials per process; forget what earlier tests found so this
    # test exercises the lookup with the fixture's credentials file.
    auth._Credentials._credentials_init = False
    base = f"gs://{gcs_bucket}/beam"
    started = time.monotonic()
    with FileSystems.create(f"{base}/a.txt") as f:
        f.write(b"alpha")
    first_write_s = time.monotonic() - started
    with FileSystems.create(f"{base}/b.txt") as f:
        f.write(b"beta")
    assert sorted(m.path for m in FileSystems.match([f"{base}/*.txt"])[0].metadata_list) == [
        f"{base}/a.txt", f"{base}/b.txt",
    ]
    # rename = batched copy + batched delete (Beam's file-sink finalize path).
    FileSystems.rename([f"{base}/a.txt", f"{base}/b.txt"], [f"{base}/c.txt", f"{base}/d.txt"])
    assert _names(gcs_python_env, gcs_bucket) == ["beam/c.txt", "beam/d.txt"]
    with FileSystems.open(f"{base}/c.txt") as f:
        assert f.read() == b"alpha"
    FileSystems.delete([f"{base}/c.txt", f"{base}/d.txt"])
    assert not FileSystems.exists(f"{base}/c.txt")
    assert _names(gcs_python_env, gcs_bucket) == []
    # Beam sent the fixture's bearer token, i.e. it used the credentials file
    # instead of retrying the default-credentials lookup (~27 s here without it).
    # (The test's own checks above use an anonymous client, and never upload.)
    uploads = [
        r for r in gcs_python_env.front.requests
        if gcs_bucket in r.path and r.path.startswith("/upload/")
    ]
    assert uploads and all(r.authorization == f"Bearer {FAKE_TOKEN}" for r in uploads)
    print(f"beam first write (incl. credential lookup): {first_write_s:.2f} s")


@pytest.mark.slow
def test_beam_write_to_text_in_subprocess(gcs_emulator, gcs_bucket):
    """A real Beam pipeline (DirectRunner) writing sharded text to gs:// and finalizing."""
    gcs_emulator.run_python(
        f"""
        import apache_beam as beam
        with beam.Pipeline() as p:
            (p | beam.Create([str(i) for i in range(20)])
               | beam.io.WriteToText("gs://{gcs_bucket}/out/part", num_shards=2))
        """,
        timeout=120,
    )
    names = _names(gcs_emulator, gcs_bucket)
    # Finalize copied the temp shards into place and deleted the temp dir (batches).
    assert names == ["out/part-00000-of-00002", "out/part-00001-of-00002"], names
    bucket = gcs_emulator.client().bucket(gcs_bucket)
    lines = b"".join(bucket.blob(n).download_as_bytes() for n in names).split()
    assert sorted(int(x) for x in lines) == list(range(20))


@pytest.mark.slow
def test_tf_gfile_ops(gcs_emulator, gcs_bucket):
    gcs_emulator.client().bucket(gcs_bucket).blob("in/from_gcs.txt").upload_from_string(b"gcs")
    proc = gcs_emulator.run_python(
        f"""
        import os
        import tensorflow as tf
        gfile = tf.io.gfile
        base = "gs://{gcs_bucket}"
        gfile.makedirs(base + "/tf/sub")
        assert gfile.isdir(base + "/tf/sub")
        with gfile.GFile(base + "/tf/sub/a.txt", "w") as f:
            f.write("written by tf")
        big = os.urandom(3 * 1024 * 1024 + 5)  # resumable upload through the proxy
        with gfile.GFile(base + "/tf/big.bin", "wb") as f:
            f.write(big)
        with gfile.GFile(base + "/tf/big.bin", "rb") as f:
            assert f.read() == big
        with gfile.GFile(base + "/in/from_gcs.txt") as f:
            assert f.read() == "gcs"
        assert gfile.exists(base + "/tf/sub/a.txt")
        assert gfile.glob(base + "/tf/sub/*.txt") == [base + "/tf/sub/a.txt"]
        gfile.rename(base + "/tf/sub/a.txt", base + "/tf/sub/b.txt")
        assert not gfile.exists(base + "/tf/sub/a.txt")
        gfile.remove(base + "/tf/big.bin")
        print(sorted(gfile.listdir(base + "/tf/sub")))
        """
    )
    assert "['b.txt']" in proc.stdout
    bucket = gcs_emulator.client().bucket(gcs_bucket)
    assert bucket.blob("tf/sub/b.txt").download_as_bytes() == b"written by tf"
    assert "tf/big.bin" not in _names(gcs_emulator, gcs_bucket)
    seen = _through_tls_proxy(gcs_emulator, gcs_bucket)
    assert {r.host for r in seen} == {"www.googleapis.com", "storage.googleapis.com"}
    assert any(r.method == "PUT" and "upload_id=" in r.path for r in seen)
    assert all(r.authorization == f"Bearer {FAKE_TOKEN}" for r in seen)


def _tfrecord_gzip(records: list[bytes]) -> bytes:
    """TFRecord framing (length, masked crc32c, data, masked crc32c), gzipped."""
    import struct

    import google_crc32c

    def masked(data: bytes) -> bytes:
        crc = google_crc32c.value(data)
        return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)

    out = io.BytesIO()
    for r in records:
        length = struct.pack("<Q", len(r))
        out.write(length + masked(length) + r + masked(r))
    return gzip.compress(out.getvalue())


@pytest.mark.slow
def test_tf_data_reads_gzip_tfrecord_shards(gcs_emulator, gcs_bucket):
    bucket = gcs_emulator.client().bucket(gcs_bucket)
    for shard in range(2):
        records = [b"shard%d-rec%d" % (shard, i) for i in range(5)]
        bucket.blob(f"data/train/part-{shard:05d}-of-00002.tfrecord.gz").upload_from_string(
            _tfrecord_gzip(records)
        )
    proc = gcs_emulator.run_python(
        f"""
        import tensorflow as tf
        files = tf.io.gfile.glob("gs://{gcs_bucket}/data/train/part-*.tfrecord.gz")
        ds = tf.data.TFRecordDataset(sorted(files), compression_type="GZIP")
        print("RECORDS", sorted(r.decode() for r in ds.as_numpy_iterator()))
        """
    )
    expected = sorted(f"shard{s}-rec{i}" for s in range(2) for i in range(5))
    assert f"RECORDS {expected}" in proc.stdout


@pytest.mark.slow
def test_tf_checkpoints_and_saved_model_save_then_load_in_new_process(gcs_emulator, gcs_bucket):
    """What the trainer does on gs://: CheckpointManager saves (old ones deleted) and a
    SavedModel export; then a new process resumes and serves from them."""
    model_dir = f"gs://{gcs_bucket}/model"
    gcs_emulator.run_python(
        f"""
        import tensorflow as tf

        class Scale(tf.Module):
            def __init__(self):
                self.w = tf.Variable(3.0)

            @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
            def __call__(self, x):
                return x * self.w

        v = tf.Variable([1.0, 2.0])
        step = tf.Variable(0, dtype=tf.int64)
        ckpt = tf.train.Checkpoint(v=v, step=step)
        manager = tf.train.CheckpointManager(ckpt, "{model_dir}/ckpt", max_to_keep=1)
        for s in (1, 2):  # the second save deletes the first checkpoint
            step.assign(s)
            v.assign_add([10.0, 10.0])
            manager.save(checkpoint_number=s)
        tf.saved_model.save(Scale(), "{model_dir}/export")
        """
    )
    names = _names(gcs_emulator, gcs_bucket, "model/")
    assert "model/ckpt/checkpoint" in names and "model/export/saved_model.pb" in names, names
    assert not any(n.startswith("model/ckpt/ckpt-1.") for n in names), names
    assert any(n.startswith("model/ckpt/ckpt-2.") for n in names), names

    proc = gcs_emulator.run_python(
        f"""
        import tensorflow as tf
        v = tf.Variable([0.0, 0.0])
        step = tf.Variable(0, dtype=tf.int64)
        ckpt = tf.train.Checkpoint(v=v, step=step)
        manager = tf.train.CheckpointManager(ckpt, "{model_dir}/ckpt", max_to_keep=1)
        ckpt.restore(manager.latest_checkpoint).assert_consumed()
        print("RESTORED", manager.latest_checkpoint, int(step.numpy()), v.numpy().tolist())
        loaded = tf.saved_model.load("{model_dir}/export")
        print("OUT", loaded(tf.constant([1.0, 2.0])).numpy().tolist())
        """
    )
    assert f"RESTORED {model_dir}/ckpt/ckpt-2 2 [21.0, 22.0]" in proc.stdout
    assert "OUT [3.0, 6.0]" in proc.stdout
