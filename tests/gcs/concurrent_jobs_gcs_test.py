"""Issue #13 on gs:// (the GCS emulator, Beam's GcsIO in the job's own processes): two jobs
writing one output prefix at once leave one run's complete output or no _SUCCESS, and a
run removes the temporary objects a killed run left behind."""
from __future__ import annotations

import pytest

from beam_jobs import synthetic
from tests.beam_jobs import concurrent_jobs
from tests.beam_jobs import util as beam_util
from tests.gcs import util

pytest_plugins = ["tests.gcs.fixtures"]


def _objects(emulator, bucket: str, prefix: str) -> dict[str, bytes]:
    """{name relative to prefix: bytes} of every object under gs://bucket/prefix/."""
    return {n[len(prefix) + 1:]: util.read(emulator, bucket, n)
            for n in util.names(emulator, bucket, prefix + "/")}


def _input(emulator, bucket, tmp_path, name, num_users, seed) -> str:
    local = tmp_path / name
    synthetic.generate(synthetic.Config(num_users=num_users, num_movies=100,
                                        ratings_per_user=30, seed=seed), str(local))
    return util.upload_dir(emulator, str(local), bucket, f"input/{name}")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_jobs_into_one_gcs_prefix_leave_one_run_or_no_success(gcs_emulator, gcs_bucket,
                                                                   tmp_path):
    inputs = {"a": _input(gcs_emulator, gcs_bucket, tmp_path, "a", 60, 1),
              "b": _input(gcs_emulator, gcs_bucket, tmp_path, "b", 90, 2)}
    delays = {"a": [0, 0, 0.4], "b": [0, 0.3, 0]}
    outcomes = []
    for i, status in concurrent_jobs.run(inputs, f"gs://{gcs_bucket}/out",
                                         str(tmp_path / "control"), 3, delays,
                                         ["--num_shards=16"], env=gcs_emulator.subprocess_env()):
        assert set(status.values()) <= {0, 1, 2}, (i, status, "see the workers' logs")
        problems = beam_util.data_dir_problems(_objects(gcs_emulator, gcs_bucket, f"out/{i}"))
        assert problems in (None, []), (i, status, problems)
        outcomes.append((status, problems))
    print("outcomes (exit statuses, problems: None = no _SUCCESS):", outcomes)


def test_leftover_temporary_objects_are_removed(gcs_emulator, gcs_bucket, tmp_path):
    """What a job killed mid-write leaves on gs://: objects under temporary names, which
    globs like train/* match. The next run removes them and lists none of them."""
    input_uri = util.upload_dir(gcs_emulator, beam_util.SAMPLE, gcs_bucket, "input")
    bucket = gcs_emulator.client().bucket(gcs_bucket)
    leftovers = ["out/train/.tmp-0123abcd-part-00000-of-00002.tfrecord.gz",
                 "out/test/.tmp-4567cdef-part-00001-of-00002.tfrecord.gz",
                 "out/errors/.tmp-89abcdef-ratings.dat.tsv", "out/.tmp-fedcba98-metadata.json"]
    for name in leftovers:
        bucket.blob(name).upload_from_string(b"half written")
    r = util.run_module(gcs_emulator, "beam_jobs.pipeline", f"--input_dir={input_uri}",
                        f"--output_dir=gs://{gcs_bucket}/out", "--num_shards=2")
    assert r.returncode == 0, r.stderr
    files = _objects(gcs_emulator, gcs_bucket, "out")
    assert not [n for n in files if ".tmp-" in n]
    assert beam_util.data_dir_problems(files) == []
