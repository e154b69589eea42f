"""End-to-end runs of beam_jobs.pipeline on the DirectRunner: golden example, sample data
against an independent plain-Python computation, counters, bad input, output_dir rules."""
import collections
import os

import pytest

from beam_jobs import movielens, pipeline, schema, timelines
from tests.beam_jobs import util

UNK = schema.PAD_GENRE


def test_golden_example(tmp_path, golden_input):
    """Hand-computed output of a tiny input.

    User 7 rates (ratings.dat order): movie 3 at t=200, movie 1 at t=100, movie 4 at t=150
    with rating 1 (< min_rating 2: dropped), movie 2 at t=100. Kept and ordered by
    (timestamp, movie_id) -- movies 1 and 2 tie at t=100, so 1 comes first:
        position 0: movie 1, rating 5, Toy Story (1995), Animation|Children's|Comedy
        position 1: movie 2, rating 3, Jumanji (1995), Adventure|Children's|Fantasy
        position 2: movie 3, rating 4, Heat (no year -> 0), Action|Crime|Thriller
    3 ratings >= min_timeline_length 3, so two examples, max_context_length=2, genres 4:
      label 2 (position 1): context [1] padded -> ids [1, 0], ratings [5, 0],
        years [1995, 0], genres of movie 1 padded -> [Animation, Children's, Comedy, UNK].
        Not the user's last example -> train.
      label 3 (position 2): context [1, 2] -> ids [1, 2], ratings [5, 3], years [1995, 1995],
        genres flattened oldest first and cut at 4 -> [Animation, Children's, Comedy,
        Adventure]. The user's last example -> test (--split=last).
    User 9 keeps 2 ratings (< 3): dropped. Vocab counts train labels: movie 2 once.
    --novalidation: the two-split layout (validation_split_test.py has the three-split one).
    """
    out = str(tmp_path / "out")
    result = util.run_job(golden_input, out, "--max_context_length=2", "--max_context_movie_genre_length=4",
                  "--num_shards=3", "--compression=none", "--novalidation",
                  "--nolow_ratings_in_context")
    assert util.read_split(out, schema.TRAIN) == [{
        "context_movie_id": [1, 0], "context_movie_rating": [5.0, 0.0],
        "context_movie_year": [1995, 0],
        "context_movie_genre": [b"Animation", b"Children's", b"Comedy", UNK],
        "label_movie_id": [2]}]
    assert util.read_split(out, schema.TEST) == [{
        "context_movie_id": [1, 2], "context_movie_rating": [5.0, 3.0],
        "context_movie_year": [1995, 1995],
        "context_movie_genre": [b"Animation", b"Children's", b"Comedy", b"Adventure"],
        "label_movie_id": [3]}]
    meta = util.read_metadata(out)
    counts = meta["counts"]
    assert (counts["lines"], counts["malformed"], counts["below_min_rating"],
            counts["kept_ratings"], counts["users"], counts["short_users_dropped"],
            counts["train_examples"], counts["test_examples"]) == (6, 0, 1, 5, 1, 1, 1, 1)
    assert meta["flags"]["max_context_length"] == 2
    assert meta["shards"][schema.TRAIN] == [schema.shard_name(i, 3, "none") for i in range(3)]
    assert meta["vocab_size"] == 4
    assert sorted(meta["input"]["sha256"]) == sorted(meta["input"]["files"])
    with open(os.path.join(out, schema.VOCAB_FILE)) as f:
        assert f.read() == (
            "movie_id\tcount\tyear\ttitle\tgenres\n"
            "2\t1\t1995\tJumanji (1995)\tAdventure|Children's|Fantasy\n"
            "1\t0\t1995\tToy Story (1995)\tAnimation|Children's|Comedy\n"
            "3\t0\t0\tHeat\tAction|Crime|Thriller\n"
            "4\t0\t1995\tCasino (1995)\tDrama\n")
    assert os.path.exists(os.path.join(out, schema.SUCCESS_FILE))
    c = util.counters(result)
    assert (c["lines"], c["kept_ratings"], c["users"], c["short_users"], c["train_examples"],
            c["test_examples"], c["movies"]) == (6, 5, 1, 1, 1, 1, 4)


def _expected_from_raw(directory, L=10, G=10, min_rating=2, min_len=3, low_in_context=True):
    """The job's definition (--split=last, validation on), written the slow obvious way
    from the raw files: {split: [features]}, held-out examples with seen_movie_id (every
    movie rated strictly before the label in (timestamp, movie_id) order, below-min
    ratings included). Labels are the kept ratings (>= min_rating) after a user's first
    timeline rating; the timelines hold the ratings below min_rating too when
    low_in_context (--low_ratings_in_context)."""
    with open(os.path.join(directory, "movies.dat"), encoding="latin-1") as f:
        movies = {}
        for line in f:
            mid, title, genres = line.rstrip("\n").split("::")
            movies[int(mid)] = (timelines.year_from_title(title), genres.split("|"))
    by_user, rated = collections.defaultdict(list), collections.defaultdict(list)
    with open(os.path.join(directory, "ratings.dat")) as f:
        for line in f:
            u, m, r, t = (int(x) for x in line.split("::"))
            rated[u].append((t, m))
            if r >= min_rating or low_in_context:
                by_user[u].append((t, m, float(r)))
    out = {schema.TRAIN: [], schema.VALIDATION: [], schema.TEST: []}
    for u in sorted(by_user):
        tl = sorted(by_user[u])
        kept = [i for i, (_, _, r) in enumerate(tl) if r >= min_rating]
        if len(kept) < min_len:
            continue
        ids = [m for _, m, _ in tl]
        for i in kept:
            if i == 0:
                continue  # no context
            f = util.example_features(
                ids, [r for _, _, r in tl], [movies[m][0] for m in ids],
                [movies[m][1] for m in ids], i, L, G)
            split = (schema.TEST if i == kept[-1] else
                     schema.VALIDATION if i == kept[-2] else schema.TRAIN)
            if split != schema.TRAIN:
                f[schema.SEEN_MOVIE_ID] = sorted({m for t, m in rated[u] if (t, m) < tl[i][:2]})
            out[split].append(f)
    return out


def _key(f):
    return tuple(tuple(v) for _, v in sorted(f.items()))


@pytest.mark.parametrize("low_in_context", [True, False])
def test_sample_matches_plain_python_definition(tmp_path, low_in_context):
    out = str(tmp_path / "out")
    result = util.run_job(util.SAMPLE, out, "--num_shards=4",
                          *([] if low_in_context else ["--nolow_ratings_in_context"]))
    want = _expected_from_raw(util.SAMPLE, low_in_context=low_in_context)
    train = want[schema.TRAIN]
    assert len(want[schema.VALIDATION]) == len(want[schema.TEST]) == 300
    for split, examples in want.items():
        got = util.read_split(out, split, seen=split != schema.TRAIN)
        assert sorted(map(_key, got)) == sorted(map(_key, examples)), split
    meta = util.read_metadata(out)
    assert meta["counts"]["lines"] == 33000
    assert meta["counts"]["train_examples"] == len(train)
    assert sum(meta["shard_examples"]["train"]) == len(train)
    vocab = schema.parse_vocab(open(os.path.join(out, schema.VOCAB_FILE)).read(), "vocab")
    label_counts = collections.Counter(f["label_movie_id"][0] for f in train)
    assert len(vocab) == 400
    assert {r["movie_id"]: r["count"] for r in vocab} == {
        r["movie_id"]: label_counts.get(r["movie_id"], 0) for r in vocab}
    assert [(-r["count"], r["movie_id"]) for r in vocab] == sorted(
        (-r["count"], r["movie_id"]) for r in vocab)
    assert util.counters(result)["train_examples"] == len(train)


def test_csv_layout_with_random_split(tmp_path):
    movies = ["movieId,title,genres", '1,"American President, The (1995)",Comedy|Drama',
              "2,Café (2001),(no genres listed)", "3,Heat (1995),Action"]
    ratings = ["userId,movieId,rating,timestamp"] + [
        f"{u},{m},{r},{t}" for u in range(1, 40)
        for t, (m, r) in enumerate([(1, 4.5), (2, 3.5), (3, 1.5), (2, 5.0), (3, 2.0)])]
    d = util.write_input(tmp_path / "in", ratings, movies, fmt="csv", encoding="utf-8")
    out = str(tmp_path / "out")
    util.run_job(d, out, "--split=random", "--train_fraction=0.5", "--seed=3", "--num_shards=2",
                 "--nolow_ratings_in_context")
    meta = util.read_metadata(out)
    # Per user: 4 kept ratings (1.5 < 2) -> 3 examples; 39 users.
    assert meta["input"]["format"] == "csv"
    assert meta["counts"]["lines"] == 195 and meta["counts"]["below_min_rating"] == 39
    assert meta["counts"]["train_examples"] + meta["counts"]["test_examples"] == 117
    assert 30 < meta["counts"]["train_examples"] < 87  # ~58.5 expected at 0.5
    first = util.read_split(out, schema.TRAIN) + util.read_split(out, schema.TEST)
    assert {f["context_movie_rating"][0] for f in first} == {4.5}
    # Every timeline is movies 1, 2, 3 (ratings 4.5, 3.5, 2.0... after the 1.5 is dropped:
    # 1, 2, 2, 3 by timestamp), so the contexts and their flattened genres are known.
    by_context = {tuple(f["context_movie_id"][:3]): f["context_movie_genre"][:4] for f in first}
    assert by_context == {
        (1, 0, 0): [b"Comedy", b"Drama", UNK, UNK],
        (1, 2, 0): [b"Comedy", b"Drama", b"(no genres listed)", UNK],
        (1, 2, 2): [b"Comedy", b"Drama", b"(no genres listed)", b"(no genres listed)"],
    }
    vocab = schema.parse_vocab(open(os.path.join(out, schema.VOCAB_FILE)).read(), "v")
    assert {r["title"] for r in vocab} == {"American President, The (1995)", "Café (2001)",
                                           "Heat (1995)"}


BAD_RATINGS = [
    "1::1::5::10",
    "",                       # line 2: blank
    "1::2::5",                # 3: field count
    "1::x::5::12",            # 4: non-numeric
    "1::3::9::13",            # 5: rating out of range
    "1::99::4::14",           # 6: unknown movie (kept aside, not malformed)
    "1::2::4::15",
    "1::3::4::16",
    "2::1::4::17",
    "2::2::4::18",
    "2::3::4::19",
]


def test_bad_lines_are_counted_and_set_aside(tmp_path):
    raw = "".join(x + "\n" for x in BAD_RATINGS).encode()
    raw = raw.replace(b"2::1::4::17", b"2::1::4::17\xff")  # line 9: undecodable
    d = util.write_input(tmp_path / "in", raw, util.GOLDEN_MOVIES + ["bad movie line"])
    out = str(tmp_path / "out")
    # 17-byte read ranges: lines are numbered across many ranges.
    result = util.run_job(d, out, "--max_bad_fraction=0.6", "--read_chunk_bytes=17", "--num_shards=1")
    with open(os.path.join(out, schema.ERRORS_DIR, "ratings.dat.tsv")) as f:
        rows = [line.split("\t") for line in f.read().splitlines()]
    assert rows[0] == ["file", "line", "reason", "text"]
    assert [(os.path.basename(r[0]), int(r[1]), r[2]) for r in rows[1:]] == [
        ("ratings.dat", 2, movielens.BLANK), ("ratings.dat", 3, movielens.FIELD_COUNT),
        ("ratings.dat", 4, movielens.NON_NUMERIC), ("ratings.dat", 5, movielens.RATING_RANGE),
        ("ratings.dat", 6, movielens.UNKNOWN_MOVIE), ("ratings.dat", 9, movielens.UNDECODABLE)]
    # The undecodable byte as a lone surrogate, escaped (exact: the bytes come back).
    assert rows[6][3] == "2::1::4::17\\udcff"
    assert schema.unescape_field(rows[6][3]).encode("utf-8", "surrogateescape") == (
        b"2::1::4::17\xff")
    with open(os.path.join(out, schema.ERRORS_DIR, "movies.dat.tsv")) as f:
        assert f.read().splitlines()[1].split("\t")[1:3] == ["5", movielens.FIELD_COUNT]
    counts = util.read_metadata(out)["counts"]
    assert counts["lines"] == 11 and counts["malformed"] == 5 and counts["unknown_movie"] == 1
    assert counts["malformed_by_reason"] == {
        movielens.BLANK: 1, movielens.FIELD_COUNT: 1, movielens.NON_NUMERIC: 1,
        movielens.RATING_RANGE: 1, movielens.UNDECODABLE: 1}
    assert counts["movies_malformed"] == 1 and counts["bad_fraction"] == round(6 / 11, 9)
    # User 1 keeps movies 1, 2, 3 (t=10, 15, 16); user 2 keeps movies 2, 3. User 1's two
    # examples: validation (second-to-last) and test.
    assert counts["users"] == 1 and counts["train_examples"] == 0
    assert counts["validation_examples"] == counts["test_examples"] == 1
    c = util.counters(result)
    assert (c["malformed"], c["malformed_blank_line"], c["unknown_movie"],
            c["movies_malformed"]) == (5, 1, 1, 1)


def test_too_many_bad_lines_fail_without_success(tmp_path, capsys):
    d = util.write_input(tmp_path / "in", BAD_RATINGS, util.GOLDEN_MOVIES)
    out = str(tmp_path / "out")
    with pytest.raises(Exception, match="--max_bad_fraction=0.001"):
        util.run_job(d, out, "--num_shards=1")
    assert not os.path.exists(os.path.join(out, schema.SUCCESS_FILE))
    assert not os.path.exists(os.path.join(out, schema.METADATA_FILE))
    # The set-aside lines the message points to are already written.
    with open(os.path.join(out, schema.ERRORS_DIR, "ratings.dat.tsv")) as f:
        assert len(f.read().splitlines()) == 1 + 5
    # The CLI prints our message, not a runner traceback, and exits non-zero.
    rc = pipeline.main([f"--input_dir={d}", f"--output_dir={out}", "--num_shards=1"])
    err = capsys.readouterr().err
    assert rc == 1 and "5 of 11 rating lines are malformed or name unknown movies" in err
    assert "[while running" not in err
    assert "ratings.dat" in err


def test_output_dir_rules(tmp_path, capsys, golden_input):
    good = golden_input
    bad = util.write_input(tmp_path / "bad", BAD_RATINGS, util.GOLDEN_MOVIES)
    out = str(tmp_path / "out")
    util.run_job(good, out, "--num_shards=2")
    assert os.path.exists(os.path.join(out, schema.SUCCESS_FILE))
    # A finished run is refused before any work starts.
    assert pipeline.main([f"--input_dir={good}", f"--output_dir={out}"]) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    # --overwrite removes the old _SUCCESS first; this run then fails: no _SUCCESS, and
    # the old shards (2 of them) are gone rather than mixed with the new ones (1).
    with pytest.raises(Exception, match="max_bad_fraction"):
        util.run_job(bad, out, "--overwrite", "--num_shards=1")
    assert not os.path.exists(os.path.join(out, schema.SUCCESS_FILE))
    assert sorted(os.listdir(os.path.join(out, schema.TRAIN))) == [schema.shard_name(0, 1)]


@pytest.mark.parametrize("setup,message", [
    (lambda p: str(p / "nope"), "no such directory"),
    (lambda p: util.write_input(p / "a", util.GOLDEN_RATINGS, None), "movies file not found"),
    (lambda p: util.write_input(p / "b", b"", util.GOLDEN_MOVIES), "ratings file is empty"),
])
def test_unusable_input_stops_at_once(tmp_path, capsys, setup, message):
    d = setup(tmp_path)
    assert pipeline.main([f"--input_dir={d}", f"--output_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert message in err and str(d) in err
    assert not os.path.exists(tmp_path / "out")


def test_multi_threading_direct_runner_is_refused(tmp_path, capsys, golden_input):
    assert pipeline.main([f"--input_dir={golden_input}", f"--output_dir={tmp_path / 'out'}",
                          "--direct_num_workers=2",
                          "--direct_running_mode=multi_threading"]) == 2
    assert "--direct_running_mode=multi_threading loses records" in capsys.readouterr().err
