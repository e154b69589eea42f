"""Keeps bench/quality.py honest: the tutorial's own code is scored like every trainer row.

The fast tests check the table (validation and test side by side), row selection, the
--exclude_seen wiring and bad input. The slow one prepares a tiny synthetic data_dir with
quality's own preparation (the Beam job), trains the tutorial's code (bench/tutorial_run.py)
and a trainer row for one epoch each in their subprocesses, and compares what they report.
"""
import json
import os

import pytest
import tensorflow as tf

from beam_jobs import schema
from bench import quality, quality_prep, tutorial_run
from tests.beam_jobs import util
from trainer import data, evaluate

TINY = ("--num_users=60", "--num_movies=80", "--ratings_per_user=20", "--seed=3")


def _metrics(top_10: float) -> dict:
    return {k: top_10 / 2 if k != "top_10" else top_10 for k in quality.KEYS}


def test_table_shows_validation_and_test_side_by_side():
    rows = [
        {"name": "popularity", "data": "last", "chosen_on": "-", "flags": "",
         "metrics": {"validation": _metrics(0.1), "test": _metrics(0.2)},
         "train_s": None, "wall_s": None, "best_rate": None},
        {"name": "defaults", "data": "last", "chosen_on": "validation", "flags": "--x=1",
         "metrics": {"test": _metrics(0.3)}, "train_s": 12.4, "wall_s": 20.6, "best_rate": 51234},
    ]
    lines = quality.table(rows).splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head[:5] == ["model", "data", "chosen on", "flags", "top_1 val / test"]
    assert "top_10 val / test" in head and "mrr val / test" in head
    pop = dict(zip(head, (c.strip() for c in lines[2].strip("|").split("|")), strict=True))
    assert pop["top_10 val / test"] == "0.1000 / 0.2000"
    assert pop["top_1 val / test"] == "0.0500 / 0.1000"
    assert (pop["train s"], pop["wall s"], pop["best epoch ex/s"]) == ("-", "-", "-")
    defaults = dict(zip(head, (c.strip() for c in lines[3].strip("|").split("|")), strict=True))
    # A data_dir without a validation split: its column says so instead of a number.
    assert defaults["top_10 val / test"] == "- / 0.3000"
    assert defaults["chosen on"] == "validation" and defaults["flags"] == "`--x=1`"
    assert (defaults["train s"], defaults["wall s"], defaults["best epoch ex/s"]) == \
        ("12", "21", "51,234")


def test_rows_tutorial_epochs_only_and_random():
    rows = quality.select_rows([3, 30], ["wide=--embedding_dim=256"], [], random=False)
    assert list(rows)[:2] == ["tutorial's code, 3 epochs", "tutorial's code, 30 epochs"]
    assert rows["tutorial's code, 30 epochs"].tutorial_epochs == 30
    assert rows["wide"].flags == ("--embedding_dim=256",) and rows["wide"].tutorial_epochs == 0
    assert "tutorial preset, random split" not in rows  # no random data_dir given
    assert "tutorial preset, random split" in quality.select_rows([3], [], [], random=True)
    # --only takes a name or the part before its comma.
    only = quality.select_rows([1, 3], [], ["tutorial's code", "defaults"], random=False)
    assert list(only) == ["tutorial's code, 1 epoch", "tutorial's code, 3 epochs", "defaults"]


def test_the_tutorials_rows_run_on_the_reference_timelines():
    """Its code and its preset train on the reference generator's timelines when the data
    set has them (--reference_dir, or a prepared set), else on the last split."""
    rows = quality.select_rows([3], [], [], random=False)
    both = {"last": "/l", "reference": "/r"}
    kinds = {name: quality.data_kind(row, both) for name, row in rows.items()}
    assert kinds == {"tutorial's code, 3 epochs": "reference", "tutorial preset": "reference",
                     quality.MARKOV_ROW: "last", "defaults": "last", "towers alone": "last"}
    assert {quality.data_kind(row, {"last": "/l", "reference": None})
            for row in rows.values()} == {"last"}


def test_exclude_seen_reaches_both_kinds_of_row():
    on = quality.trainer_args("D", "M", ("--epochs=1",), exclude_seen=True)
    off = quality.trainer_args("D", "M", ("--epochs=1",), exclude_seen=False)
    assert "--eval_exclude_seen" in on and "--eval_exclude_seen" not in off
    assert "--epochs=1" in on and "--data_dir=D" in on
    assert "--exclude_seen" in quality.tutorial_args("D", "T", 3, "O", exclude_seen=True)
    assert "--exclude_seen" not in quality.tutorial_args("D", "T", 3, "O", exclude_seen=False)


def test_seeds_reach_both_kinds_of_row_and_a_rows_own_seed_wins():
    args = quality.trainer_args("D", "M", ("--seed=9",), exclude_seen=False, seed=1)
    assert args.index("--seed=1") < args.index("--seed=9")  # absl: the last one wins
    assert not any(a.startswith("--seed") for a in quality.trainer_args("D", "M", (), False))
    assert "--seed=2" in quality.tutorial_args("D", "T", 3, "O", False, seed=2)
    assert not any(a.startswith("--seed") for a in quality.tutorial_args("D", "T", 3, "O", False))


def test_mean_of_runs_averages_each_metric_and_keeps_each_seed():
    def run(top_10, train_s, rate):
        return {"metrics": {"step": 3, "validation": _metrics(top_10),
                            "test": _metrics(top_10 + 0.1), "popularity": _metrics(0.01)},
                "train_s": train_s, "wall_s": train_s + 5, "best_rate": rate}
    r = quality.mean_of_runs([run(0.1, 10, 100), run(0.2, 20, 300), run(0.3, 30, 200)])
    assert set(r["metrics"]) == {"validation", "test"}
    assert r["metrics"]["validation"]["top_10"] == pytest.approx(0.2)
    assert r["metrics"]["test"]["top_10"] == pytest.approx(0.3)
    assert r["metrics"]["test"]["top_1"] == pytest.approx(0.15)
    assert [m["validation"]["top_10"] for m in r["per_seed"]] == [0.1, 0.2, 0.3]
    assert (r["train_s"], r["wall_s"], r["best_rate"]) == (20, 25, 300)
    one = quality.mean_of_runs([run(0.1, 10, None)])
    assert one["metrics"]["validation"] == _metrics(0.1) and one["best_rate"] is None


def test_bad_flags_exit_2(tmp_path, capsys):
    for argv, says in ((["--ml100k", "--tutorial_epochs=0"], "--tutorial_epochs=0"),
                       (["--ml100k", "--seeds=1,x"], "--seeds=1,x: give comma-separated"),
                       (["--ml100k", "--seeds=1,1"], "--seeds=1,1: each seed once"),
                       ([f"--last_dir={tmp_path}"], f"--last_dir={tmp_path}: no _SUCCESS"),
                       ([f"--reference_dir={tmp_path}", "--ml100k"],
                        f"--reference_dir={tmp_path}: no _SUCCESS"),
                       ([], "give --ml100k")):
        with pytest.raises(SystemExit) as e:
            quality.main([*argv, f"--work_dir={tmp_path}"])
        assert e.value.code == 2
        assert says in capsys.readouterr().err


def test_source_hash_follows_the_code_not_its_bytecode(tmp_path):
    pkg = tmp_path / "beam_jobs"
    pkg.mkdir()
    (pkg / "a.py").write_text("x = 1\n")
    before = quality_prep._tree_hash(str(tmp_path), ("beam_jobs",))
    # Running the code writes bytecode (in the snapshot too): the cached data stays valid.
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    assert quality_prep._tree_hash(str(tmp_path), ("beam_jobs",)) == before
    (pkg / "a.py").write_text("x = 2\n")
    assert quality_prep._tree_hash(str(tmp_path), ("beam_jobs",)) != before


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(work dir, data_dir): the tiny synthetic set through quality's own preparation."""
    work = str(tmp_path_factory.mktemp("quality"))
    return work, quality_prep.prepare_synthetic(work, "tiny", TINY)


@pytest.mark.slow
def test_the_reference_timelines_share_the_raw_ratings_and_the_labels(tiny):
    work, data_dir = tiny
    reference = quality_prep.prepare_synthetic(work, "tiny", TINY, reference=True)
    assert reference == data_dir + "-reference"
    meta = {}
    for d in (data_dir, reference):
        with open(os.path.join(d, schema.METADATA_FILE)) as f:
            meta[d] = json.load(f)
    assert meta[data_dir]["flags"]["low_ratings_in_context"] is True
    assert meta[reference]["flags"]["low_ratings_in_context"] is False
    assert meta[data_dir]["input"] == meta[reference]["input"]  # one raw set
    for split in ("validation", "test"):
        labels = [sorted(f[schema.LABEL_MOVIE_ID][0] for f in util.read_split(d, split))
                  for d in (data_dir, reference)]
        assert labels[0] == labels[1] and labels[0]
    assert (meta[data_dir]["counts"]["train_examples"]
            > meta[reference]["counts"]["train_examples"])  # first kept ratings after low ones


@pytest.mark.slow
def test_reference_timelines_are_prepared_only_for_rows_that_train_on_them(tiny):
    work, data_dir = tiny
    asked = []

    def prepare(**kwargs):  # quality_prep's own preparation, each request recorded
        asked.append(kwargs)
        return quality_prep.prepare_synthetic(work, "tiny", TINY, **kwargs)

    ours = quality.select_rows([3], [], ["defaults", "markov chain"], False)
    assert quality.prepared_dirs(prepare, ours) == {"last": data_dir, "reference": None}
    assert asked == [{}]
    theirs = quality.select_rows([3], [], ["defaults", "tutorial's code"], False)
    assert quality.prepared_dirs(prepare, theirs) == {
        "last": data_dir, "reference": data_dir + "-reference"}
    assert asked[1:] == [{}, {"reference": True}]
    assert os.path.exists(os.path.join(data_dir + "-reference", schema.SUCCESS_FILE))


@pytest.mark.slow
def test_tutorial_input_is_the_train_split_once(tiny):
    work, data_dir = tiny
    path = quality_prep.tutorial_input(data_dir, work)
    records = sum(1 for _ in tf.data.TFRecordDataset(path))
    with open(os.path.join(data_dir, schema.METADATA_FILE)) as f:
        assert records == json.load(f)["counts"]["train_examples"]
    made = os.stat(path).st_mtime_ns
    assert quality_prep.tutorial_input(data_dir, work) == path
    assert os.stat(path).st_mtime_ns == made  # cached, not rewritten
    # A train file that is not the data_dir's train split is refused, naming it.
    short = os.path.join(work, "short.tfrecord")
    with tf.io.TFRecordWriter(short) as w:
        w.write(b"x")
    assert tutorial_run.main([f"--data_dir={data_dir}", f"--train_file={short}", "--epochs=1",
                              f"--output={work}/never.json"]) == 2
    assert not os.path.exists(f"{work}/never.json")


@pytest.mark.slow
def test_tutorial_row_reports_what_trainer_rows_report(tiny):
    work, data_dir = tiny
    info = data.load_data_dir(data_dir)
    splits = data.eval_splits(info)
    seen = schema.has_seen_movie_ids(info.metadata)  # rank without seen movies when it can
    tut = quality.run_tutorial(data_dir, 1, work, exclude_seen=seen)
    row = quality.run_row(data_dir, ("--epochs=1", "--global_batch_size=128"), work,
                          exclude_seen=seen)
    # The same splits, metric names and popularity keys as metrics.json of a trainer row.
    assert set(quality.split_metrics(tut["metrics"])) == set(splits)
    assert set(quality.split_metrics(row["metrics"])) == set(splits)
    for split in splits:
        assert set(tut["metrics"][split]) == set(row["metrics"][split])
        assert tut["metrics"][split]["num_queries"] == info.num_examples[split]
    assert tut["metrics"]["eval_split"] == row["metrics"]["eval_split"] == splits[0]
    # One evaluator: the same popularity numbers (and exclusion) in both processes.
    pop_tut, pop_row = (quality.popularity_metrics(r["metrics"]) for r in (tut, row))
    assert set(pop_tut) == set(splits)
    for split in splits:
        assert pop_tut[split] == pytest.approx(pop_row[split], rel=1e-12)
    if seen:  # the exclusion really reached the child: ranks only improve without seen movies
        plain = evaluate.popularity_baseline(data.make_eval_dataset(info, 512, splits[-1]),
                                             info.movie_ids, info.counts)
        assert pop_tut[splits[-1]]["mrr"] > plain["mrr"]
    # Fewer train examples than the tutorial's batch of 12800 (the remainder kept): one step.
    assert info.num_examples[schema.TRAIN] < 12800 and tut["metrics"]["step"] == 1
    assert tut["train_s"] > 0 and tut["best_rate"] > 0
    rows = [{"name": "tutorial's code, 1 epoch", "data": "last", "chosen_on": "tutorial",
             "flags": "", "metrics": quality.split_metrics(tut["metrics"]),
             "train_s": tut["train_s"], "wall_s": tut["wall_s"], "best_rate": tut["best_rate"]}]
    cell = quality.table(rows).splitlines()[2].split("|")[7].strip()  # top_10 val / test
    want = [f"{tut['metrics'][s]['top_10']:.4f}" if s in splits else "-"
            for s in quality.EVAL_SPLITS]
    assert cell == " / ".join(want)


@pytest.mark.slow
def test_seeds_run_a_trained_row_once_each_and_report_the_mean(tiny):
    work, data_dir = tiny
    rows = {"short": quality.Row(flags=("--epochs=1", "--global_batch_size=128")),
            quality.MARKOV_ROW: quality.Row(markov=True)}
    out = quality.run_data_set({"last": data_dir}, rows, work, exclude_seen=False, seeds=(1, 2))
    by_name = {r["name"]: r for r in out}
    short, markov = by_name["short"], by_name[quality.MARKOV_ROW]
    assert short["seeds"] == 2 and markov["seeds"] == 1  # counting has no seed
    first, second = (m["test"] for m in short["per_seed"])
    assert first != second  # each seed reached its run
    assert short["metrics"]["test"]["mrr"] == pytest.approx((first["mrr"] + second["mrr"]) / 2)
    assert quality.table(out).splitlines()[0].rstrip(" |").endswith("seeds")


@pytest.mark.slow
def test_markov_row_is_scored_like_the_others(tiny):
    work, data_dir = tiny
    info = data.load_data_dir(data_dir)
    splits = data.eval_splits(info)
    seen = schema.has_seen_movie_ids(info.metadata)
    rows = quality.select_rows([3], [], [quality.MARKOV_ROW], random=False)
    assert list(rows) == [quality.MARKOV_ROW] and rows[quality.MARKOV_ROW].markov
    out = quality.run_data_set({"last": data_dir}, rows, work, exclude_seen=seen)
    assert [r["name"] for r in out] == ["popularity", quality.MARKOV_ROW]
    pop, row = out
    assert set(row["metrics"]) == set(splits) and row["train_s"] > 0 and not row["best_rate"]
    for split in splits:
        ds = data.make_eval_dataset(info, 512, split, seen=seen)
        # The same evaluator and exclusion as every row: popularity agrees in-process.
        assert pop["metrics"][split] == pytest.approx(
            evaluate.popularity_baseline(ds, info.movie_ids, info.counts, exclude_seen=seen),
            rel=1e-12)
        assert row["metrics"][split]["num_queries"] == info.num_examples[split]
        # The synthetic generator's users follow their last movies: counting beats popularity.
        assert row["metrics"][split]["mrr"] > pop["metrics"][split]["mrr"]
