"""The validation split and the held-out examples' seen_movie_id (issue #15): each user's
second-to-last example in validation/, seen movies on validation/ and test/ examples,
--novalidation as the earlier layout byte for byte, no validation/ with --split=random, and
the trainer's verifier on both layouts."""
import hashlib
import json
import os

import pytest

from beam_jobs import schema, synthetic, timelines
from tests.beam_jobs import util

MOVIES = [f"{i}::Movie {i} (199{i})::Drama" for i in range(1, 7)]
# Hand-built timelines (user::movie::rating::timestamp, file order shuffled on purpose):
RATINGS = [
    # User 7, ordered by (timestamp, movie_id): 1 (t100), 2 (t100, tie: 1 first),
    # [4 (t150) rated 1 < --min_rating: seen, not in the timeline], 3 (t200),
    # 5 (t300), 6 (t300, tie: 5 first). Kept timeline 1 2 3 5 6: labels 2, 3 train,
    # 5 validation, 6 test.
    "7::3::4::200", "7::6::2::300", "7::1::5::100", "7::4::1::150", "7::2::3::100",
    "7::5::5::300",
    # User 9: 3 ratings, 2 (t2) and 3 (t2) tie: timeline 1 2 3 -> validation 2, test 3,
    # no train example.
    "9::3::4::2", "9::1::5::1", "9::2::4::2",
    # User 11: 4 rated 1 at t0 (before everything), 5 rated 1 at t6 (after label 2's
    # (6, 2) in (timestamp, movie_id) order, before label 3). Timeline 1 2 3.
    "11::4::1::0", "11::1::5::5", "11::2::4::6", "11::5::1::6", "11::3::4::7",
]


@pytest.fixture
def hand_built(tmp_path):
    return util.write_input(tmp_path / "in", RATINGS, MOVIES)


def _labels_and_seen(out, split):
    return [(f[schema.LABEL_MOVIE_ID][0], f[schema.CONTEXT_MOVIE_ID][:4],
             f[schema.SEEN_MOVIE_ID]) for f in util.read_split(out, split, seen=True)]


def test_hand_built_timelines(tmp_path, hand_built):
    out = str(tmp_path / "out")
    util.run_job(hand_built, out, "--num_shards=1", "--compression=none",
                 "--max_context_length=4", "--nolow_ratings_in_context")
    # Shard order: users ascending (7, 9, 11), then label position.
    # (label, context, seen): seen = movies rated strictly before the label, below-min
    # ones included, ascending.
    assert _labels_and_seen(out, schema.VALIDATION) == [
        (5, [1, 2, 3, 0], [1, 2, 3, 4]),
        (2, [1, 0, 0, 0], [1]),
        (2, [1, 0, 0, 0], [1, 4]),       # 5 at (6, 5) comes after the label (6, 2)
    ]
    assert _labels_and_seen(out, schema.TEST) == [
        (6, [1, 2, 3, 5], [1, 2, 3, 4, 5]),
        (3, [1, 2, 0, 0], [1, 2]),
        (3, [1, 2, 0, 0], [1, 2, 4, 5]),
    ]
    # Train examples carry no seen_movie_id (parsed as an empty list).
    assert _labels_and_seen(out, schema.TRAIN) == [(2, [1, 0, 0, 0], []),
                                                   (3, [1, 2, 0, 0], [])]
    meta = util.read_metadata(out)
    c = meta["counts"]
    assert (c["train_examples"], c["validation_examples"], c["test_examples"]) == (2, 3, 3)
    assert schema.example_splits(meta) == schema.EXAMPLE_SPLITS
    assert schema.has_seen_movie_ids(meta)
    assert meta["shard_examples"] == {"train": [2], "validation": [3], "test": [3]}
    # vocab.tsv counts train labels only: validation labels (5, 2) stay at 0 unless train.
    vocab = schema.parse_vocab(open(os.path.join(out, schema.VOCAB_FILE)).read(), "vocab")
    assert {r["movie_id"]: r["count"] for r in vocab} == {1: 0, 2: 1, 3: 1, 4: 0, 5: 0, 6: 0}
    # A reader's independent check covers validation/ too.
    files = util.output_files(out)
    assert util.data_dir_problems(files) == []
    name = f"{schema.VALIDATION}/{schema.shard_name(0, 1, 'none')}"
    files[name] = files[name][:-1]
    assert util.data_dir_problems(files) == [f"{name}: not the listed bytes"]


def test_contexts_before_the_label_second(tmp_path, hand_built):
    """--context_before_label_second: contexts and seen lists stop at the label's second."""
    out = str(tmp_path / "out")
    util.run_job(hand_built, out, "--num_shards=1", "--compression=none",
                 "--max_context_length=4", "--context_before_label_second",
                 "--nolow_ratings_in_context")
    # User 7 (seconds: 1, 2 at 100; 4 below min at 150; 3 at 200; 5, 6 at 300): label 2
    # shares the first second (no example); 5 and 6 both see 1 2 3, not each other.
    # User 9 (1 at t1; 2, 3 at t2): both labels see 1. User 11 (4 below min at t0; 1 at
    # t5; 2 and 5 below min at t6; 3 at t7): label 2 sees 1 (seen 1, 4), label 3 sees
    # 1 2 (seen 1, 2, 4, 5).
    assert _labels_and_seen(out, schema.TRAIN) == [(3, [1, 2, 0, 0], [])]
    assert _labels_and_seen(out, schema.VALIDATION) == [
        (5, [1, 2, 3, 0], [1, 2, 3, 4]),
        (2, [1, 0, 0, 0], [1]),
        (2, [1, 0, 0, 0], [1, 4]),
    ]
    assert _labels_and_seen(out, schema.TEST) == [
        (6, [1, 2, 3, 0], [1, 2, 3, 4]),
        (3, [1, 0, 0, 0], [1]),
        (3, [1, 2, 0, 0], [1, 2, 4, 5]),
    ]
    meta = util.read_metadata(out)
    assert meta["flags"]["context_before_label_second"] is True
    assert meta["counts"]["train_examples"] == 1
    vocab = schema.parse_vocab(open(os.path.join(out, schema.VOCAB_FILE)).read(), "vocab")
    assert {r["movie_id"]: r["count"] for r in vocab} == {1: 0, 2: 0, 3: 1, 4: 0, 5: 0, 6: 0}
    assert util.data_dir_problems(util.output_files(out)) == []


@pytest.mark.parametrize("before_second", [False, True])
def test_contexts_with_ratings_below_min_rating(tmp_path, hand_built, before_second):
    """The default --low_ratings_in_context: ratings below --min_rating join the contexts
    (and users/ histories), never the labels; a user's first kept rating is a label when a
    lower one came before it."""
    out = str(tmp_path / "out")
    util.run_job(hand_built, out, "--num_shards=1", "--compression=none",
                 "--max_context_length=4",
                 *(["--context_before_label_second"] if before_second else []))
    # User 7's timeline: 1 2 (t100) [4 (t150, 1 star)] 3 (t200) 5 6 (t300). User 11's:
    # [4 (t0, 1 star)] 1 (t5) 2 [5 (t6, 1 star)] (t6) 3 (t7): label 1 now has a context.
    if before_second:  # label 2 shares user 7's first second; 6 does not see 5, 3 not 2
        train = [(3, [1, 2, 4, 0], []), (1, [4, 0, 0, 0], [])]
        test_7 = (6, [1, 2, 4, 3], [1, 2, 3, 4])
        test_9 = (3, [1, 0, 0, 0], [1])
    else:
        train = [(2, [1, 0, 0, 0], []), (3, [1, 2, 4, 0], []), (1, [4, 0, 0, 0], [])]
        test_7 = (6, [2, 4, 3, 5], [1, 2, 3, 4, 5])
        test_9 = (3, [1, 2, 0, 0], [1, 2])
    assert _labels_and_seen(out, schema.TRAIN) == train
    assert _labels_and_seen(out, schema.VALIDATION) == [
        (5, [1, 2, 4, 3], [1, 2, 3, 4]),
        (2, [1, 0, 0, 0], [1]),
        (2, [4, 1, 0, 0], [1, 4]),
    ]
    assert _labels_and_seen(out, schema.TEST) == [
        test_7,
        test_9,
        (3, [4, 1, 2, 5], [1, 2, 4, 5]),
    ]
    # users/ histories: the last 4 timeline movies, the 1-star ones included.
    histories = {u[schema.USER_ID][0]: u[schema.CONTEXT_MOVIE_ID] for u in util.read_users(out)}
    assert histories == {7: [4, 3, 5, 6], 9: [1, 2, 3, 0], 11: [1, 2, 5, 3]}
    meta = util.read_metadata(out)
    assert meta["flags"]["low_ratings_in_context"] is True
    vocab = schema.parse_vocab(open(os.path.join(out, schema.VOCAB_FILE)).read(), "vocab")
    assert {r["movie_id"]: r["count"] for r in vocab if r["count"]} == {
        m: 1 for m, _, _ in train}
    assert util.data_dir_problems(util.output_files(out)) == []


def test_split_rule():
    # 5 positions (4 examples): 1, 2 train, 3 validation, 4 test.
    assert [timelines.split_of(1, p, 5, "last", True, 0.9, 0) for p in (1, 2, 3, 4)] == [
        schema.TRAIN, schema.TRAIN, schema.VALIDATION, schema.TEST]
    assert [timelines.split_of(1, p, 3, "last", True, 0.9, 0) for p in (1, 2)] == [
        schema.VALIDATION, schema.TEST]  # 2 examples: no train
    assert [timelines.split_of(1, p, 3, "last", False, 0.9, 0) for p in (1, 2)] == [
        schema.TRAIN, schema.TEST]
    draws = {timelines.split_of(u, p, 0, "random", True, 0.5, 3)
             for u in range(50) for p in range(1, 10)}
    assert draws == {schema.TRAIN, schema.TEST}  # the random split has no validation


def test_metadata_written_before_validation_reads_as_two_splits():
    """A data_dir's metadata.json from before validation/ existed: no "validation" flag, no
    validation_examples count, no validation manifest entry."""
    old = {"flags": {"split": "last"}, "counts": {"train_examples": 5, "test_examples": 2},
           schema.MANIFEST: {schema.TRAIN: [], schema.TEST: [], schema.USERS: []}}
    assert schema.example_splits(old) == schema.SPLITS
    assert schema.manifest_splits(old) == (schema.TRAIN, schema.TEST, schema.USERS)
    assert not schema.has_seen_movie_ids(old)
    new = {**old, "flags": {"split": "last", "validation": True},
           schema.MANIFEST: {**old[schema.MANIFEST], schema.VALIDATION: []}}
    assert schema.example_splits(new) == (schema.TRAIN, schema.VALIDATION, schema.TEST)
    assert schema.manifest_splits(new) == schema.SHARD_DIRS
    assert schema.has_seen_movie_ids(new)


def test_every_example_is_in_exactly_one_split(tmp_path):
    """On data/sample: validation holds each user's second-to-last example (one per user),
    and the three splits together are the two-split layout's examples, each once."""
    new, old = str(tmp_path / "new"), str(tmp_path / "old")
    util.run_job(util.SAMPLE, new, "--num_shards=3")
    util.run_job(util.SAMPLE, old, "--num_shards=3", "--novalidation")

    def key(f):
        return tuple(tuple(v) for k, v in sorted(f.items()) if k != schema.SEEN_MOVIE_ID)

    got = {s: sorted(map(key, util.read_split(new, s))) for s in schema.EXAMPLE_SPLITS}
    assert len(got[schema.VALIDATION]) == len(got[schema.TEST]) == 300  # one per user
    assert sorted(got[schema.TRAIN] + got[schema.VALIDATION]) == sorted(
        map(key, util.read_split(old, schema.TRAIN)))
    assert got[schema.TEST] == sorted(map(key, util.read_split(old, schema.TEST)))
    # Held-out examples: seen covers the context (rated before the label), not the label.
    for split in (schema.VALIDATION, schema.TEST):
        for f in util.read_split(new, split, seen=True):
            seen = f[schema.SEEN_MOVIE_ID]
            assert seen == sorted(set(seen)) and seen
            assert {m for m in f[schema.CONTEXT_MOVIE_ID] if m} <= set(seen)
            assert f[schema.LABEL_MOVIE_ID][0] not in seen


def _digest(out):
    """One SHA-256 over the train/ and test/ shards' and vocab.tsv's listed SHA-256s."""
    m = util.read_metadata(out)
    lines = [f"{s}/{e['name']} {e['sha256']}" for s in schema.SPLITS
             for e in m[schema.MANIFEST][s]]
    lines.append(f"{schema.VOCAB_FILE} " + m[schema.FILES][schema.VOCAB_FILE]["sha256"])
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


# _digest of what beam_jobs wrote before the validation split existed (main at a16b558),
# on the same inputs and flags: --novalidation must keep writing these bytes.
BEFORE_VALIDATION = {
    "sample": "ec953fb2d73ca1ec6879691a9cefd6b455b3f9804f39e003ae444a8d2a7e3970",
    "synthetic": "a91dfb124740f5b1b5018a93009b36a9a958360f3e9dfcf883861b067830c87c",
}


def test_novalidation_writes_the_earlier_layout_byte_for_byte(tmp_path):
    syn = str(tmp_path / "syn")
    synthetic.generate(synthetic.Config(num_users=120, num_movies=80, ratings_per_user=30,
                                        seed=7, format="csv"), syn)
    for name, inp, flags in (("sample", util.SAMPLE, ["--num_shards=3"]),
                             ("synthetic", syn, ["--num_shards=2", "--min_rating=3"])):
        out = str(tmp_path / name)
        util.run_job(inp, out, "--compression=none", "--novalidation",
                     "--nolow_ratings_in_context", *flags)
        assert _digest(out) == BEFORE_VALIDATION[name], name
        meta = util.read_metadata(out)
        assert not os.path.exists(os.path.join(out, schema.VALIDATION))
        assert schema.VALIDATION not in meta[schema.MANIFEST]
        assert schema.example_splits(meta) == schema.SPLITS
        assert meta["counts"]["validation_examples"] == 0
        assert not schema.has_seen_movie_ids(meta)
    # The default layout differs (validation/ taken out of train/, seen on test/).
    out = str(tmp_path / "default")
    util.run_job(util.SAMPLE, out, "--compression=none", "--num_shards=3")
    assert _digest(out) != BEFORE_VALIDATION["sample"]


def test_random_split_writes_no_validation(tmp_path, hand_built):
    out = str(tmp_path / "out")
    util.run_job(hand_built, out, "--split=random", "--train_fraction=0.5", "--seed=1",
                 "--num_shards=2")
    meta = util.read_metadata(out)
    assert not os.path.exists(os.path.join(out, schema.VALIDATION))
    assert schema.example_splits(meta) == schema.SPLITS
    assert schema.VALIDATION not in meta["shards"] and schema.VALIDATION not in meta[
        schema.MANIFEST]
    c = meta["counts"]
    # 2 + 2 + 3 labels after a first rating (user 11's first kept one follows a 1-star).
    assert c["validation_examples"] == 0 and c["train_examples"] + c["test_examples"] == 9
    # Its test examples still carry seen_movie_id (the flag is on); train ones do not.
    assert schema.has_seen_movie_ids(meta)
    assert all(s for _, _, s in _labels_and_seen(out, schema.TEST))
    assert not any(s for _, _, s in _labels_and_seen(out, schema.TRAIN))


def test_trainer_accepts_both_layouts(tmp_path, hand_built):
    """trainer/data.load_data_dir verifies a data_dir with validation/ (and reads it) and
    one without."""
    from trainer import data

    for flags in ([], ["--novalidation"]):
        out = str(tmp_path / ("old" if flags else "new"))
        util.run_job(hand_built, out, "--num_shards=2", *flags)
        info = data.load_data_dir(out)
        meta = json.loads(open(os.path.join(out, schema.METADATA_FILE)).read())
        expected = {schema.TRAIN: meta["counts"]["train_examples"], schema.TEST: 3}
        if not flags:
            expected[schema.VALIDATION] = 3
        assert info.num_examples == expected
        data.check_first_records(info)
