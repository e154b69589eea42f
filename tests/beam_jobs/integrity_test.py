"""A data_dir is one run's complete output or has no _SUCCESS (issue #13): the manifest,
_SUCCESS's commitment to metadata.json, the job's own check before _SUCCESS, two jobs
writing one output_dir at once, and the leftovers of a killed job."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from beam_jobs import movielens, outputs, schema, shards, synthetic
from beam_jobs.options import JobConfig
from tests.beam_jobs import concurrent_jobs, util


def _synthetic(path, num_users, seed, **kw) -> str:
    synthetic.generate(synthetic.Config(num_users=num_users, num_movies=100,
                                        ratings_per_user=30, seed=seed, **kw), str(path))
    return str(path)


def test_manifest_lists_every_file_and_success_commits_to_metadata(tmp_path):
    import tensorflow as tf

    d = _synthetic(tmp_path / "in", 60, 1)
    with open(os.path.join(d, "ratings.dat"), "ab") as f:
        f.write(b"not a rating\n")  # an errors/ file with a line in it
    out = str(tmp_path / "out")
    util.run_job(d, out, "--num_shards=3")
    files = util.output_files(out)
    assert util.data_dir_problems(files) == []
    metadata = json.loads(files[schema.METADATA_FILE])
    assert files[schema.SUCCESS_FILE] == schema.success_record(files[schema.METADATA_FILE])
    for split in schema.SPLITS:
        manifest = metadata[schema.MANIFEST][split]
        assert [e["name"] for e in manifest] == metadata["shards"][split]
        assert [e["examples"] for e in manifest] == metadata["shard_examples"][split]
        for e in manifest:  # the example counts are the records in the shard
            ds = tf.data.TFRecordDataset(os.path.join(out, split, e["name"]), "GZIP")
            assert sum(1 for _ in ds) == e["examples"]
    assert sorted(metadata[schema.FILES]) == [
        "errors/movies.dat.tsv", "errors/ratings.dat.tsv", schema.VOCAB_FILE]
    # The reader's check can fail: a changed byte, an extra file.
    shard = f"train/{metadata['shards']['train'][0]}"
    assert util.data_dir_problems({**files, shard: files[shard][:-1] + b"x"}) == [
        f"{shard}: not the listed bytes"]
    assert util.data_dir_problems({**files, "train/.tmp-1-x": b""}) == [
        "train/.tmp-1-x: not listed"]


def _write_all_but_metadata(d, out, num_shards=3):
    """What one run writes before its finalize, by the job's own functions (the DoFns are
    shells around them): (cfg, inputs, finalize's arguments)."""
    cfg = JobConfig(input_dir=d, output_dir=out, num_shards=num_shards)
    outputs.prepare_output_dir(out, overwrite=False)
    inputs = movielens.find_inputs(d)
    table, _, movie_lines = movielens.parse_movies(movielens.read_bytes(inputs.movies), "dat")
    movies = outputs.MoviesStats(table, movie_lines, {})
    chunks, _, stats = shards.parse_range(inputs.ratings, 0, inputs.ratings_size, "dat", cfg,
                                          table)
    results = [shards.write_shard(i, [c for s, c in chunks if s == i], cfg, table)
               for i in range(num_shards)]
    errors = [outputs.write_errors((path, []), out) for path in (inputs.ratings, inputs.movies)]
    vocab = outputs.write_vocab(None, out, movies, results)
    return cfg, inputs, (movies, [stats], results, errors, vocab, {})


@pytest.mark.parametrize("change,named", [
    ("nothing", None),
    ("overwrite a shard", "train/part-00001-of-00003.tfrecord.gz: "),
    ("same size, other bytes", "train/part-00001-of-00003.tfrecord.gz: other bytes"),
    ("add a shard", "train/part-00000-of-00002.tfrecord.gz: not written by this run"),
    ("remove a shard", "test/part-00002-of-00003.tfrecord.gz: missing"),
    ("replace vocab.tsv", "vocab.tsv: "),
    ("too many bad lines", "--max_bad_fraction"),  # a failure of another kind
])
def test_finalize_writes_success_only_over_this_runs_files(tmp_path, change, named):
    """Another job's files (from a run on another input, into another directory) put
    where this run wrote its own, between its last write and its finalize."""
    other = str(tmp_path / "other")
    util.run_job(_synthetic(tmp_path / "b", 80, 2), other, "--num_shards=3")
    out = str(tmp_path / "out")
    d = _synthetic(tmp_path / "a", 60, 1)
    if change == "too many bad lines":
        with open(os.path.join(d, "ratings.dat"), "ab") as f:
            f.write(b"bad\n" * 10)
    cfg, inputs, args = _write_all_but_metadata(d, out)
    train1 = os.path.join(out, "train", schema.shard_name(1, 3))
    if change == "overwrite a shard":
        os.replace(os.path.join(other, "train", schema.shard_name(1, 3)), train1)
    elif change == "same size, other bytes":
        data = open(train1, "rb").read()
        open(train1, "wb").write(data[:-1] + bytes([data[-1] ^ 1]))
    elif change == "add a shard":
        open(os.path.join(out, "train", schema.shard_name(0, 2)), "wb").close()
    elif change == "remove a shard":
        os.remove(os.path.join(out, "test", schema.shard_name(2, 3)))
    elif change == "replace vocab.tsv":
        os.replace(os.path.join(other, schema.VOCAB_FILE), os.path.join(out, schema.VOCAB_FILE))
    # The other job finished first: its _SUCCESS is there, and must not outlive a mixture.
    open(os.path.join(out, schema.SUCCESS_FILE), "wb").write(b"{}")
    if named is None:
        metadata = outputs.finalize(None, cfg, inputs, *args)
        assert util.data_dir_problems(util.output_files(out)) == []
        assert metadata == util.read_metadata(out)
        return
    with pytest.raises(outputs.JobError) as e:
        outputs.finalize(None, cfg, inputs, *args)
    assert named in str(e.value)
    if change != "too many bad lines":
        assert isinstance(e.value, outputs.OutputChangedError)
        assert f"--output_dir {out}: before writing _SUCCESS, " in str(e.value)
        assert outputs.job_error_message(e.value).endswith(
            "run the job again, alone, with --overwrite")
    assert not os.path.exists(os.path.join(out, schema.SUCCESS_FILE))
    assert not os.path.exists(os.path.join(out, schema.METADATA_FILE))


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_jobs_into_one_output_dir_leave_one_run_or_no_success(tmp_path):
    """Two jobs on different inputs write the same output_dir at once, ten times over,
    meeting at different stages: every time the directory has no _SUCCESS, or _SUCCESS
    over exactly one run's files (checked by util.data_dir_problems, not by the job)."""
    inputs = {"a": _synthetic(tmp_path / "a", 60, 1), "b": _synthetic(tmp_path / "b", 90, 2)}
    delays = {"a": [0, 0, 0.3, 0, 0.5, 0, 0.1, 0, 0.05, 0.2],
              "b": [0, 0.2, 0, 0.4, 0, 0.1, 0, 0.6, 0, 0]}
    root = tmp_path / "out"
    outcomes = []
    for i, status in concurrent_jobs.run(inputs, str(root), str(tmp_path / "control"), 10,
                                         delays, ["--num_shards=64"]):
        # 0 done, 1 failed with our one-line message, 2 refused (the other job had finished
        # first); 3 would be an exception of another kind.
        assert set(status.values()) <= {0, 1, 2}, (i, status, "see the workers' logs")
        files = util.output_files(root / str(i))
        problems = util.data_dir_problems(files)
        assert problems in (None, []), (i, status, problems)
        winner = None
        if problems == []:
            winner = json.loads(files[schema.METADATA_FILE])["flags"]["input_dir"]
            assert status[next(n for n, d in inputs.items() if d == winner)] == 0
        outcomes.append((status, winner))
    print("outcomes (exit statuses, input of the finished run):", outcomes)


def test_a_killed_jobs_leftovers_are_removed_by_the_next_run(tmp_path):
    """SIGKILL while shards are being written leaves .tmp-<uuid>-part-... files; the next
    run removes them and lists none of them."""
    d = _synthetic(tmp_path / "in", 1500, 3)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "beam_jobs.pipeline", f"--input_dir={d}",
                             f"--output_dir={out}", "--num_shards=2"], cwd=util.ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def temp_files():
        return [os.path.join(r, n) for r, _, names in os.walk(out) for n in names
                if n.startswith(".tmp-") and "part-" in n]

    try:
        deadline = time.monotonic() + 60
        while not temp_files():
            assert proc.poll() is None, "the job ended before it wrote a shard"
            assert time.monotonic() < deadline
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    left = temp_files()
    assert left and not os.path.exists(out / schema.SUCCESS_FILE)
    util.run_job(d, out, "--num_shards=2")
    files = util.output_files(out)
    assert not [p for p in files if ".tmp-" in p]
    assert util.data_dir_problems(files) == []
