"""Each PTransform of beam_jobs.pipeline on a real TestPipeline (DirectRunner), with
assert_that on its output PCollections."""
import os

import apache_beam as beam
import numpy as np
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs import movielens, outputs, pipeline, schema, shards
from beam_jobs.options import JobConfig
from beam_jobs.timelines import shard_of_user
from tests.beam_jobs import util

RATINGS = [
    "7::3::4::978300200",
    "7::1::5::978300100",
    "bad line",                # line 3
    "7::4::1::978300150",
    "7::2::3::978300100",
    "9::1::5::1",
    "9::8::5::2",              # line 7: movie 8 is unknown
    "9::2::5::2",
]


def test_read_movies_read_ratings_resolve_lines(tmp_path):
    d = util.write_input(tmp_path / "in", RATINGS, util.GOLDEN_MOVIES + ["oops"])
    inputs = movielens.find_inputs(d)
    cfg = JobConfig(input_dir=d, output_dir=str(tmp_path / "out"), num_shards=2,
                    read_chunk_bytes=19)
    with test_pipeline.TestPipeline() as p:
        movies, movie_errors = p | "ReadMovies" >> pipeline.ReadMovies(inputs)
        chunks, pending, stats = p | "ReadRatings" >> pipeline.ReadRatings(inputs, cfg, movies)
        errors = pending | "ResolveLines" >> pipeline.ResolveLines(stats)

        assert_that(movies | beam.Map(lambda m: (m.table.ids.tolist(), m.lines)),
                    equal_to([([1, 2, 3, 4], 5)]), label="Movies")
        assert_that(movie_errors | beam.Map(lambda e: (e.line, e.reason)),
                    equal_to([(5, movielens.FIELD_COUNT)]), label="MovieErrors")
        # Ratings of known movies, each under its user's stable shard; the one below
        # --min_rating (2) travels too: build_shards keeps it only as a users/ seen movie.
        rows = chunks | beam.FlatMap(lambda kv: [
            (kv[0], u, m, float(r), t) for u, m, r, t in zip(
                kv[1].user.tolist(), kv[1].movie.tolist(), kv[1].rating.tolist(),
                kv[1].timestamp.tolist(), strict=True)])
        s7, s9 = shard_of_user(7, 2), shard_of_user(9, 2)
        assert_that(rows, equal_to([
            (s7, 7, 3, 4.0, 978300200), (s7, 7, 1, 5.0, 978300100), (s7, 7, 2, 3.0, 978300100),
            (s7, 7, 4, 1.0, 978300150), (s9, 9, 1, 5.0, 1), (s9, 9, 2, 5.0, 2)]), label="Chunks")
        totals = (stats
                  | beam.Map(lambda s: (s.lines, sum(s.malformed.values()), s.unknown_movie,
                                        s.below_min_rating, s.kept_ratings))
                  | beam.CombineGlobally(lambda xs: tuple(map(sum, zip(*xs, strict=True)))
                                         if xs else ()))
        assert_that(totals, equal_to([(8, 1, 1, 1, 5)]), label="Stats")
        assert_that(errors | beam.Map(lambda e: (os.path.basename(e.file), e.line, e.reason)),
                    equal_to([("ratings.dat", 3, movielens.FIELD_COUNT),
                              ("ratings.dat", 7, movielens.UNKNOWN_MOVIE)]), label="Errors")


def _columns(user, movie, rating, ts):
    return shards.Columns(np.array(user, np.int64), np.array(movie, np.int64),
                          np.array(rating, np.float32), np.array(ts, np.int64))


def test_build_shards_write_errors_vocab_finalize(tmp_path):
    out = str(tmp_path / "out")
    cfg = JobConfig(input_dir="in", output_dir=out, num_shards=3, compression="none",
                    max_context_length=2, max_context_movie_genre_length=4)
    table, _, _ = movielens.parse_movies(
        "".join(x + "\n" for x in util.GOLDEN_MOVIES).encode(), "dat")
    inputs = movielens.InputFiles("dat", "in/ratings.dat", "in/movies.dat", 1, 1)
    s7 = shard_of_user(7, 3)
    with test_pipeline.TestPipeline() as p:
        movies = p | "Movies" >> beam.Create([outputs.MoviesStats(table, 4, {})])
        # User 7's ratings arrive in two chunks (two byte ranges), out of order. Timeline
        # 1, 2, 3, 4: labels 2 train, 3 validation, 4 test.
        chunks = p | "Chunks" >> beam.Create([
            (s7, _columns([7, 7], [4, 3], [4.0, 4.0], [978300300, 978300200])),
            (s7, _columns([7, 7], [2, 1], [3.0, 5.0], [978300100, 978300100])),
        ])
        results = chunks | "BuildShards" >> pipeline.BuildShards(cfg, movies)
        assert_that(results | beam.Map(lambda r: (r.shard, r.users, r.train_examples,
                                                  r.test_examples, r.label_ids.tolist())),
                    equal_to([(i, int(i == s7), int(i == s7), int(i == s7),
                               [2] if i == s7 else []) for i in range(3)]),
                    label="ShardResults")
        errors = p | "Errs" >> beam.Create([
            outputs.ErrorRecord("in/ratings.dat", 9, "blank_line", ""),
            outputs.ErrorRecord("in/ratings.dat", 3, "non_numeric", "1::x")])
        error_files = errors | "WriteErrors" >> pipeline.WriteErrors(
            out, ["in/ratings.dat", "in/movies.dat"])
        assert_that(error_files | beam.Map(lambda f: (f.path, f.count)),
                    equal_to([("errors/ratings.dat.tsv", 2), ("errors/movies.dat.tsv", 0)]),
                    label="ErrorFiles")
        vocab = p | "WriteVocab" >> pipeline.WriteVocab(out, movies, results)
        assert_that(vocab | beam.Map(lambda f: (f.path, f.count)),
                    equal_to([(schema.VOCAB_FILE, 4)]), label="Vocab")
        range_stats = p | "RangeStats" >> beam.Create([
            outputs.RangeStats("in/ratings.dat", 0, 4, 4, {}, 0, 1, 3)])
        sha = p | "Sha" >> beam.Create([("in/ratings.dat", "a" * 64), ("in/movies.dat", "b" * 64)])
        meta = p | "Finalize" >> pipeline.Finalize(
            cfg, inputs, movies=movies, range_stats=range_stats, shard_results=results,
            error_files=error_files, vocab=vocab, sha256=sha)
        assert_that(meta | beam.Map(lambda m: (m["counts"]["train_examples"],
                                               m["counts"]["validation_examples"],
                                               m["counts"]["test_examples"],
                                               m["counts"]["users"], m["errors"],
                                               sorted(schema.listed_files(m)))),
                    equal_to([(1, 1, 1, 1, {"movies.dat.tsv": 0, "ratings.dat.tsv": 2},
                               sorted(["errors/movies.dat.tsv", "errors/ratings.dat.tsv",
                                       schema.VOCAB_FILE]
                                      + [f"{split}/{schema.shard_name(i, 3, 'none')}"
                                         for split in schema.SHARD_DIRS for i in range(3)]))]),
                    label="Metadata")
    with open(os.path.join(out, schema.ERRORS_DIR, "ratings.dat.tsv")) as f:
        assert f.read() == ("file\tline\treason\ttext\nin/ratings.dat\t3\tnon_numeric\t1::x\n"
                            "in/ratings.dat\t9\tblank_line\t\n")
    assert util.read_split(out, schema.TRAIN)[0]["context_movie_id"] == [1, 0]
    assert util.read_split(out, schema.VALIDATION)[0]["label_movie_id"] == [3]
    assert util.read_split(out, schema.TEST)[0]["label_movie_id"] == [4]
    assert sorted(os.listdir(out)) == sorted([schema.SUCCESS_FILE, schema.METADATA_FILE,
                                              schema.VOCAB_FILE, schema.ERRORS_DIR,
                                              *schema.SHARD_DIRS])
