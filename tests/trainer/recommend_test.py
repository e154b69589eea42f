"""Tests for the trainer.recommend CLI on an export made here by hand."""
import os
import subprocess
import sys

import pytest

from beam_jobs import schema
from tests.gcs.fixtures import gcs_bucket, gcs_emulator  # noqa: F401
from tests.trainer.towers import hand_towers
from trainer import export, recommend

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


MOVIES = [10, 20, 30, 40, 50, 60]
CANDIDATES = {10: [1, 0], 20: [0, 1], 30: [1, 1], 40: [-1, 0], 50: [0.5, 0.5], 60: [0, -1]}
QUERIES = {10: [2, 1], 40: [0, 0]}
# L = 3. History 40, 10, 20, 30 -> context [10, 20, 30] (the last 3) -> q = [2, 1]:
#   scores 10: 2, 20: 1, 30: 3, 40: -2, 50: 1.5, 60: -1
#   excluding the history: 50 (1.5), 60 (-1); keeping it: 30, 10, 50, 20, 60, 40.
# Reading the FIRST 3 ids instead would give q = [0, 0] and all scores 0.
HISTORY = "40,10,20,30"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("model")
    vocab = tmp / "vocab.tsv"
    with open(vocab, "w") as f:
        f.write("\t".join(schema.VOCAB_COLUMNS) + "\n")
        for i in MOVIES:
            f.write(schema.format_vocab_row(i, 1, 1990 + i, f"Movie {i} ({1990 + i})", "Drama") + "\n")
    towers = hand_towers(QUERIES, CANDIDATES, 3)
    export.export_model(*towers, MOVIES, str(tmp / "run" / "export"), str(vocab), k=5)
    return str(tmp / "run")


@pytest.mark.slow
def test_cli_prints_history_and_recommendations(model_dir):
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["PYTHONPATH"] = ROOT
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.recommend", f"--model_dir={model_dir}",
         f"--history={HISTORY}", "--k=2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "Movie 40 (2030)  (not used)" in proc.stdout  # the oldest, beyond L
    assert any(line.split()[:3] == ["20", "2010", "Movie"] for line in lines)
    table = lines[lines.index("Top 2 recommendations:") + 2 :]
    assert [line.split()[:4] for line in table] == [
        ["1", "50", "2040", "1.5000"],
        ["2", "60", "2050", "-1.0000"],
    ]
    assert table[0].endswith("Movie 50 (2040)")


def test_keep_history(model_dir):
    _, results, length = recommend.recommend(model_dir, [40, 10, 20, 30], k=5, exclude_history=False)
    assert length == 3
    assert results == [(30, 3.0), (10, 2.0), (50, 1.5), (20, 1.0), (60, -1.0)]


def test_short_history_is_right_padded():
    assert recommend.context_row([7], 3) == [7, 0, 0]
    assert recommend.context_row([1, 2, 3, 4], 3) == [2, 3, 4]


def test_fewer_candidates_than_k_after_exclusion(model_dir):
    # The model reads [30, 40, 50] -> q = [0, 0]: every score is 0, so vocabulary
    # order decides. The signature drops 30, 40, 50 (and pads with -inf), the
    # CLI drops the older 10 and 20: only 60 remains.
    _, results, _ = recommend.recommend(model_dir, [10, 20, 30, 40, 50], k=5)
    assert [m for m, _ in results] == [60]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--history=10,999,7"], "movie id(s) 999, 7 not in the model's vocabulary"),
        (["--history="], "--history is empty"),
        (["--history=10,x"], "--history: 'x' is not a movie id"),
        (["--history=10", "--k=6"], "--k must be between 1 and 5"),
    ],
)
def test_bad_flags(model_dir, capsys, flags, message):
    assert recommend.main([f"--model_dir={model_dir}", *flags]) == 2
    assert message in capsys.readouterr().err


def test_model_dir_without_export(tmp_path, capsys):
    assert recommend.main([f"--model_dir={tmp_path}", "--history=1"]) == 2
    err = capsys.readouterr().err
    assert f"no exported model at {tmp_path}/export" in err


@pytest.mark.slow
def test_export_and_recommend_on_gcs(gcs_emulator, gcs_bucket):  # noqa: F811
    # Both run in one fresh interpreter: TF's gs:// settings (proxy, CA) must be
    # in the environment before TensorFlow loads.
    vocab = "\t".join(schema.VOCAB_COLUMNS) + "\n" + "".join(
        schema.format_vocab_row(i, 1, 2000, f"Movie {i} (2000)", "Drama") + "\n"
        for i in range(1, 21)
    )
    gcs_emulator.client().bucket(gcs_bucket).blob("data/vocab.tsv").upload_from_string(vocab)
    proc = gcs_emulator.run_python(
        f"""
        from tests.trainer.towers import tower_cfg
        from trainer import export, model, recommend
        towers = model.build_towers(list(range(1, 21)), 3, tower_cfg(4))
        export.export_model(*towers, list(range(1, 21)), "gs://{gcs_bucket}/run/export",
                            "gs://{gcs_bucket}/data/vocab.tsv", k=10)
        recommend.main(["--model_dir=gs://{gcs_bucket}/run", "--history=3,4", "--k=4"])
        """,
        timeout=180,
    )
    names = {b.name for b in gcs_emulator.client().list_blobs(gcs_bucket, prefix="run/")}
    assert {"run/export/saved_model.pb", "run/export/assets/vocab.tsv"} <= names
    lines = proc.stdout.splitlines()
    table = lines[lines.index("Top 4 recommendations:") + 2 :]
    assert [line.split()[0] for line in table] == ["1", "2", "3", "4"]
    assert not {line.split()[1] for line in table} & {"3", "4"}  # history excluded
    assert "Movie 4 (2000)" in proc.stdout
