"""The export as a server sees it: numbered versions, and every signature loaded in a
fresh process with plain TensorFlow (no seqrec code imported), checked against the
in-memory towers."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from beam_jobs import schema
from tests.trainer.towers import tower_cfg
from trainer import export, model

VOCAB = list(range(1, 31))
L, K = 4, 5
# Histories as clients send them: shorter than L, longer (the last L count), with an
# unknown id (999: left out and counted) and padding.
HISTORIES = [[3, 7, 0, 0, 0, 0], [5, 999, 2, 1, 4, 6], [9, 0, 0, 0, 0, 0]]
READ = [[3, 7, 0, 0], [2, 1, 4, 6], [9, 0, 0, 0]]  # what the model must read for each

LOAD_AND_CALL = r"""
import json, sys
import numpy as np
import tensorflow as tf
assert "trainer" not in sys.modules and "beam_jobs" not in sys.modules
path, histories, examples = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
loaded = tf.saved_model.load(path)
ids = tf.constant(histories, tf.int64)
out = {name: {k: v.numpy().tolist() for k, v in fn(**args).items()} for name, fn, args in [
    ("serving_default", loaded.signatures["serving_default"], {"context_movie_id": ids}),
    ("serving_exclude_context", loaded.signatures["serving_exclude_context"],
     {"context_movie_id": ids}),
    ("serving_examples", loaded.signatures["serving_examples"],
     {"examples": tf.constant([bytes.fromhex(e) for e in examples])}),
    ("query_embedding", loaded.signatures["query_embedding"], {"context_movie_id": ids}),
    ("candidates", loaded.signatures["candidates"], {}),
    ("recommend_int32", loaded.recommend, {"context_movie_id": tf.constant(histories, tf.int32)}),
]}
for sig in out.values():
    if "titles" in sig:
        sig["titles"] = [[t.decode() for t in row] if isinstance(row, list) else row.decode()
                         for row in sig["titles"]]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serving")
    vocab_path = str(tmp / "vocab.tsv")
    with open(vocab_path, "w") as f:
        f.write("\t".join(schema.VOCAB_COLUMNS) + "\n" + "".join(
            schema.format_vocab_row(m, 1, 2000, f"Movie {m} (2000)", "Drama") + "\n"
            for m in VOCAB))
    prior = np.log(np.linspace(1, 3, len(VOCAB)) / 60.0)  # a popularity prior: D = 9
    towers = model.build_towers(VOCAB, L, tower_cfg(8), log_prior=prior)
    base = str(tmp / "export")
    first = export.export_version(base, *towers, VOCAB, vocab_path, K)
    second = export.export_version(base, *towers, VOCAB, vocab_path, K)
    return towers, base, first, second


def test_versions_count_up_and_latest_points_at_the_newest(exported):
    _, base, first, second = exported
    assert (first, second) == (os.path.join(base, "1"), os.path.join(base, "2"))
    assert export.versions(base) == [1, 2] and export.latest(base) == second
    with open(os.path.join(base, export.LATEST_FILE)) as f:
        assert f.read() == "2\n"
    assert sorted(os.listdir(base)) == ["1", "2", "LATEST"]  # no temporary left behind


def _example(context: list[int]) -> str:
    feature = tf.train.Feature(int64_list=tf.train.Int64List(value=context))
    example = tf.train.Example(features=tf.train.Features(
        feature={schema.CONTEXT_MOVIE_ID: feature}))
    return example.SerializeToString().hex()


@pytest.mark.slow
def test_every_signature_in_a_fresh_process_matches_the_towers(exported):
    (query_model, candidate_model), base, _, second = exported
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_AND_CALL, second, json.dumps(HISTORIES),
         json.dumps([_example(c) for c in READ])],
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")},
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    queries = query_model(tf.constant(READ, tf.int64)).numpy()
    candidates = candidate_model(tf.constant(VOCAB, tf.int64)).numpy()
    scores = queries @ candidates.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    want_ids = np.array(VOCAB)[order]
    for name in ("serving_default", "serving_examples", "recommend_int32"):
        got = out[name]
        np.testing.assert_array_equal(got["movie_ids"], want_ids, err_msg=name)
        np.testing.assert_allclose(got["scores"], np.take_along_axis(scores, order, 1),
                                   rtol=1e-5, atol=1e-5, err_msg=name)
        assert got["titles"][0][0] == f"Movie {want_ids[0][0]} (2000)"
    assert out["serving_default"]["unknown_ids"] == [0, 1, 0]
    excluded = out["serving_exclude_context"]["movie_ids"]
    assert all(not set(row) & set(history) for row, history in zip(excluded, READ, strict=True))
    np.testing.assert_allclose(out["query_embedding"]["embedding"], queries, rtol=1e-5,
                               atol=1e-6)
    assert np.asarray(out["query_embedding"]["embedding"]).shape == (3, 9)
    assert out["candidates"]["movie_ids"] == VOCAB
    np.testing.assert_allclose(out["candidates"]["embeddings"], candidates, rtol=1e-5, atol=1e-6)
    assert out["candidates"]["titles"][:2] == ["Movie 1 (2000)", "Movie 2 (2000)"]


def test_docs_show_every_signature():
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "serving.md")) as f:
        text = f.read()
    for name in (export.SERVING_DEFAULT, export.SERVING_EXCLUDE_CONTEXT, export.SERVING_EXAMPLES,
                 export.QUERY_EMBEDDING, export.CANDIDATES):
        assert f"`{name}`" in text and f"signature_def['{name}']" in text, name
