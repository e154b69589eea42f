"""beam_jobs.recommend_all end to end: a data_dir made by the real Beam job on generated
data, a real SavedModel (trainer.export.export_version of untrained towers), the real
DirectRunner; results checked against the SavedModel called directly."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from beam_jobs import example_records, recommend_all, schema, synthetic
from tests.beam_jobs import util
from tests.trainer.towers import tower_cfg
from trainer import data as trainer_data
from trainer import export, model

L, K = 5, 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(data_dir, model_dir, export_dir): 60 users, a 2-version export (LATEST -> 2)."""
    tmp = tmp_path_factory.mktemp("recommend_all")
    raw = str(tmp / "raw")
    synthetic.generate(synthetic.Config(num_users=60, num_movies=50, ratings_per_user=20,
                                        seed=5), raw)
    data_dir = str(tmp / "data")
    util.run_job(raw, data_dir, "--num_shards=3", f"--max_context_length={L}",
                 "--min_rating=3")
    info = trainer_data.load_data_dir(data_dir)  # the trainer still reads and verifies it
    towers = model.build_towers(list(info.movie_ids), L, tower_cfg(8))
    model_dir = str(tmp / "model")
    vocab = schema.join(data_dir, schema.VOCAB_FILE)
    export.export_version(schema.join(model_dir, "export"), *towers, info.movie_ids, vocab, K)
    newest = export.export_version(schema.join(model_dir, "export"), *towers, info.movie_ids,
                                   vocab, K)
    return data_dir, model_dir, newest


def _rows(output_dir: str) -> list[tuple]:
    names = sorted(n for n in os.listdir(output_dir) if n.endswith(".parquet"))
    rows = []
    for name in names:
        t = pq.read_table(os.path.join(output_dir, name)).to_pydict()
        rows += list(zip(*(t[c] for c in recommend_all.COLUMNS), strict=True))
    return rows


def _run(setup, out, *flags) -> dict:
    data_dir, model_dir, _ = setup
    return recommend_all.run([f"--data_dir={data_dir}", f"--model_dir={model_dir}",
                              f"--output_dir={out}", *flags])


def test_users_split_in_manifest_and_records_match_tensorflow(setup):
    data_dir = setup[0]
    with open(os.path.join(data_dir, schema.METADATA_FILE)) as f:
        metadata = json.load(f)
    entries = metadata[schema.MANIFEST][schema.USERS]
    assert [e["name"] for e in entries] == [schema.shard_name(i, 3) for i in range(3)]
    assert sum(e["examples"] for e in entries) == metadata["counts"]["user_records"] > 0
    for e in entries:  # the manifest vouches for users/ as for train/ and test/
        with open(os.path.join(data_dir, schema.USERS, e["name"]), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == e["sha256"]
    users = util.read_users(data_dir)
    for u in users:
        ctx, seen = u[schema.CONTEXT_MOVIE_ID], u[schema.SEEN_MOVIE_ID]
        assert len(ctx) == L and seen == sorted(set(seen))
        assert set(ctx) - {schema.PAD_MOVIE_ID} <= set(seen)
    # Our encoder's bytes are TensorFlow's deterministic serialization.
    u = users[0]
    ex = tf.train.Example(features=tf.train.Features(feature={
        k: tf.train.Feature(int64_list=tf.train.Int64List(value=v)) for k, v in u.items()}))
    framed = example_records.encode_user_records(
        np.array(u[schema.USER_ID]), np.array([u[schema.CONTEXT_MOVIE_ID]]),
        [np.array(u[schema.SEEN_MOVIE_ID])])
    first = os.path.join(data_dir, schema.USERS, entries[0]["name"])
    with open(first, "rb") as f:
        data = gzip.decompress(f.read())
    assert recommend_all.read_tfrecords(framed.tobytes())[0] == ex.SerializeToString(
        deterministic=True)
    assert len(recommend_all.read_tfrecords(data)) == entries[0]["examples"]


def test_rows_equal_the_saved_model_called_per_user(setup, tmp_path):
    out = str(tmp_path / "recs")
    metadata = _run(setup, out, f"--k={K}")
    assert metadata["input"]["export_dir"] == setup[2]  # LATEST's version
    assert os.path.exists(os.path.join(out, schema.SUCCESS_FILE))
    users = util.read_users(setup[0])
    rows = _rows(out)
    assert metadata["counts"] == {"users": len(users), "rows": len(users) * K}
    serve = tf.saved_model.load(setup[2]).signatures["serving_default"]
    got = {}
    for user_id, rank, movie, score, title in rows:
        got.setdefault(user_id, []).append((rank, movie, score, title))
    for u in users:
        want = serve(context_movie_id=tf.constant([u[schema.CONTEXT_MOVIE_ID]], tf.int64))
        mine = got[u[schema.USER_ID][0]]
        assert [r[0] for r in mine] == list(range(1, K + 1))
        assert [r[1] for r in mine] == want["movie_ids"].numpy()[0].tolist()
        np.testing.assert_allclose([r[2] for r in mine], want["scores"].numpy()[0], rtol=1e-5,
                                   atol=1e-6)
        assert [r[3] for r in mine] == [t.decode() for t in want["titles"].numpy()[0]]


def test_exclude_seen_gives_the_best_unseen_k(setup, tmp_path):
    out = str(tmp_path / "recs")
    k = 20  # more than the export's K: scored from query_embedding + candidates
    _run(setup, out, f"--k={k}", "--exclude_seen")
    loaded = tf.saved_model.load(setup[2])
    cands = loaded.signatures["candidates"]()
    ids = cands["movie_ids"].numpy()
    got = {}
    for user_id, _, movie, _, _ in _rows(out):
        got.setdefault(user_id, []).append(movie)
    for u in util.read_users(setup[0]):
        q = loaded.signatures["query_embedding"](
            context_movie_id=tf.constant([u[schema.CONTEXT_MOVIE_ID]], tf.int64))["embedding"]
        scores = (q.numpy() @ cands["embeddings"].numpy().T)[0]
        order = [int(ids[i]) for i in np.argsort(-scores, kind="stable")
                 if int(ids[i]) not in set(u[schema.SEEN_MOVIE_ID])]
        mine = got.get(u[schema.USER_ID][0], [])
        assert len(mine) == min(k, len(order))  # exactly k when k unseen movies exist
        assert not set(mine) & set(u[schema.SEEN_MOVIE_ID])
        assert mine == order[:k]


def test_same_bytes_across_runs(setup, tmp_path):
    # Batches of 7 users: several model calls per shard, in bundles the runner chooses.
    outs = [str(tmp_path / name) for name in ("a", "b")]
    _run(setup, outs[0], "--exclude_seen", "--batch_size=7")
    _run(setup, outs[1], "--exclude_seen", "--batch_size=7")
    listings = []
    for out in outs:
        files = sorted(os.listdir(out))
        assert files == [schema.SUCCESS_FILE, schema.METADATA_FILE,
                         *[f"part-{i:05d}-of-00003.parquet" for i in range(3)]]
        listings.append({n: open(os.path.join(out, n), "rb").read() for n in files})
    assert listings[0] == listings[1]


def test_bad_inputs_exit_2_naming_the_path(setup, tmp_path, capsys):
    data_dir, model_dir, newest = setup
    out = str(tmp_path / "out")

    def refused(*argv) -> str:
        assert recommend_all.main(list(argv)) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err
        return err

    base = [f"--data_dir={data_dir}", f"--output_dir={out}"]
    empty = tmp_path / "empty_model"
    empty.mkdir()
    assert f"--model_dir {empty}" in refused(*base, f"--model_dir={empty}")
    assert f"--export_dir {tmp_path}" in refused(*base, f"--export_dir={tmp_path}")
    assert "--model_dir" in refused(*base)  # neither model flag
    assert "--exprt_dir" in refused(*base, f"--exprt_dir={newest}")
    assert "--exclude" in refused(*base, f"--export_dir={newest}", "--exclude")  # abbreviated
    assert "--k" in refused(*base, f"--export_dir={newest}", "--k=0")
    # A data_dir without _SUCCESS, and one written before users/ existed.
    unfinished = str(tmp_path / "unfinished")
    shutil.copytree(data_dir, unfinished)
    os.remove(os.path.join(unfinished, schema.SUCCESS_FILE))
    assert unfinished in refused(f"--data_dir={unfinished}", f"--output_dir={out}",
                                 f"--export_dir={newest}")
    old = str(tmp_path / "old")
    shutil.copytree(data_dir, old)
    shutil.rmtree(os.path.join(old, schema.USERS))
    with open(os.path.join(old, schema.METADATA_FILE)) as f:
        metadata = json.load(f)
    del metadata[schema.MANIFEST][schema.USERS]
    data = (json.dumps(metadata, indent=2, sort_keys=True) + "\n").encode()
    with open(os.path.join(old, schema.METADATA_FILE), "wb") as f:
        f.write(data)
    with open(os.path.join(old, schema.SUCCESS_FILE), "wb") as f:
        f.write(schema.success_record(data))
    assert f"--data_dir {old}" in refused(f"--data_dir={old}", f"--output_dir={out}",
                                          f"--export_dir={newest}")
    trainer_data.load_data_dir(old)  # such a data_dir still trains
    assert not os.path.exists(out) or not os.listdir(out)


def test_flag_parsing_and_checks_need_no_tensorflow(tmp_path):
    """The prep job's workers stay free of TensorFlow: neither module imports it (this one
    only inside SavedModelHandler), so --help and every refusal run without it."""
    code = ("import sys; import beam_jobs.pipeline, beam_jobs.recommend_all; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    proc = util.run_command([os.path.join(util.VENV_BIN, "python"), "-c", code], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]


# What the command prints at verbosity 0: its own three lines (tests/beam_jobs/util's plain
# environment: no TF_CPP_MIN_LOG_LEVEL or other help from the caller).
QUIET_LINES = [r"\d\d:\d\d:\d\d INFO recommending for \d+ users of .+ on FnApiRunner",
               r"\d\d:\d\d:\d\d INFO pipeline finished in [0-9.]+ s",
               r"\d+ recommendations for \d+ users"]
GLOG_LINE = re.compile(r"^[IWE]\d{4} ")  # TensorFlow's native log lines (I0000 00:00:...)


def _command(setup, out, tmp_path, *flags) -> subprocess.CompletedProcess:
    data_dir, model_dir, _ = setup
    return util.run_command([os.path.join(util.VENV_BIN, "python"), "-m",
                             "beam_jobs.recommend_all", f"--data_dir={data_dir}",
                             f"--model_dir={model_dir}", f"--output_dir={out}", *flags],
                            tmp_path, timeout=300)


@pytest.mark.slow
def test_command_prints_its_own_lines_and_tensorflows_only_with_v(setup, tmp_path):
    """As a user runs it: TensorFlow's import-time lines (printed by its native libraries
    before any log level applies) and Beam's runner chatter only with -v; never Beam
    2.77's false "Resource module is not available" warning; no Prism download attempt."""
    quiet = _command(setup, tmp_path / "a", tmp_path, "--exclude_seen")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    lines = quiet.stderr.splitlines()
    assert len(lines) == len(QUIET_LINES), quiet.stderr
    for line, pattern in zip(lines, QUIET_LINES, strict=True):
        assert re.fullmatch(pattern, line), line
    verbose = _command(setup, tmp_path / "b", tmp_path, "--exclude_seen", "-v")
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert any(GLOG_LINE.match(line) for line in verbose.stderr.splitlines()), verbose.stderr
    assert "apache_beam." in verbose.stderr  # Beam's loggers, named at -v
    for run in (quiet, verbose):
        assert "Resource module is not available" not in run.stderr
        assert "Prism" not in run.stderr


@pytest.mark.slow
def test_worker_processes_write_the_same_bytes_quietly(setup, tmp_path):
    """Workers in processes of their own, as on Dataflow: what they run must unpickle
    there (the command's module runs as __main__), each imports TensorFlow quietly, and
    the output is byte for byte the in-process run's."""
    in_process = str(tmp_path / "in_process")
    _run(setup, in_process, "--exclude_seen", "--batch_size=7")
    out = tmp_path / "workers"
    result = _command(setup, out, tmp_path, "--exclude_seen", "--batch_size=7",
                      "--direct_num_workers=2", "--direct_running_mode=multi_processing")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(result.stderr.splitlines()) == len(QUIET_LINES), result.stderr
    assert sorted(os.listdir(out)) == sorted(os.listdir(in_process))
    for name in os.listdir(out):
        with open(out / name, "rb") as a, open(os.path.join(in_process, name), "rb") as b:
            assert a.read() == b.read(), name


def test_title_column_takes_the_vocabularys_titles_and_blanks_unknown_ids():
    col = recommend_all.title_column(np.array([3, 1, 99, 3, 0, 2], np.int64),
                                     {1: "A", 3: "C, The (1995)", 2: ""})
    assert col.to_pylist() == ["C, The (1995)", "A", "", "C, The (1995)", "", ""]
