"""The Beam job with gs:// input and output, through Beam's own GCS IO and the emulator.

Runs in the pytest process (DirectRunner, GcsIO via STORAGE_EMULATOR_HOST): no TF on
gs:// is involved, so no subprocess is needed. The gs:// output must equal, byte for
byte, a local run of the same input (metadata.json differs only in the input paths
it records).
"""
from __future__ import annotations

import json
import os

import pytest

from beam_jobs import pipeline, schema
from tests.beam_jobs import util as beam_util
from tests.gcs import util

pytest_plugins = ["tests.gcs.fixtures"]


@pytest.fixture
def beam_gcs(gcs_python_env):
    """The emulator env in this process, with Beam's cached credentials forgotten (an
    earlier test may have looked them up without the fixture's credentials file)."""
    from apache_beam.internal.gcp import auth

    auth._Credentials._credentials_init = False
    return gcs_python_env


def bucket_files(emulator, bucket: str, prefix: str) -> dict[str, bytes]:
    return {n[len(prefix) + 1:]: util.read(emulator, bucket, n)
            for n in util.names(emulator, bucket, prefix + "/")}


@pytest.mark.slow
def test_gcs_in_gcs_out_equals_local_run(beam_gcs, gcs_bucket, tmp_path, capsys):
    input_uri = util.upload_dir(beam_gcs, beam_util.SAMPLE, gcs_bucket, "input")
    output_uri = f"gs://{gcs_bucket}/prep/v1"
    local_out = str(tmp_path / "local")
    flags = ["--num_shards=2"]
    assert pipeline.main([f"--input_dir={beam_util.SAMPLE}", f"--output_dir={local_out}",
                          *flags]) == 0
    assert pipeline.main([f"--input_dir={input_uri}", f"--output_dir={output_uri}", *flags]) == 0

    remote = bucket_files(beam_gcs, gcs_bucket, "prep/v1")
    local = beam_util.output_files(local_out)
    assert schema.SUCCESS_FILE in remote
    assert sorted(remote) == sorted(local)  # no temp objects left behind either
    assert len([n for n in remote if n.startswith("train/part-")]) == 2
    for name in local:
        if name not in (schema.METADATA_FILE, schema.SUCCESS_FILE):
            assert remote[name] == local[name], name
    # metadata.json: identical once the recorded input paths are swapped.
    meta = remote[schema.METADATA_FILE].decode()
    assert json.loads(meta)["input"]["files"] == [f"{input_uri}/ratings.dat",
                                                  f"{input_uri}/movies.dat"]
    assert meta.replace(input_uri, beam_util.SAMPLE).encode() == local[schema.METADATA_FILE]
    # _SUCCESS commits to this metadata.json (whose input paths are gs:// ones).
    assert remote[schema.SUCCESS_FILE] == schema.success_record(remote[schema.METADATA_FILE])
    # The upload went through GcsIO to the emulator (not some local path named gs:).
    assert not os.path.exists("gs:")
    assert any(r.path.startswith(f"/upload/storage/v1/b/{gcs_bucket}/")
               for r in beam_gcs.front.requests)

    # A second run into the finished output_dir is refused, and changes nothing.
    capsys.readouterr()
    assert pipeline.main([f"--input_dir={input_uri}", f"--output_dir={output_uri}",
                          *flags]) == 2
    assert (f"--output_dir {output_uri} already holds a finished run "
            f"({output_uri}/_SUCCESS exists); pass --overwrite") in capsys.readouterr().err
    assert bucket_files(beam_gcs, gcs_bucket, "prep/v1") == remote
