"""The straightforward implementation, in the style of the TensorFlow Lite reference generator.

    python -m bench.reference_prep --input_dir=DIR --output_dir=DIR

Written after tensorflow/examples lite/examples/recommendation/ml/data/
example_generation_movielens.py (the generator the TFRS sequential tutorial uses): pandas
reads the files, a Python loop builds per-user timelines of namedtuples, another builds one
tf.train.Example per position, everything is held in memory and written with
tf.io.TFRecordWriter. Three changes make its output comparable with our data contract
(beam_jobs/schema.py), and none of them makes it slower:

* timelines are ordered by (timestamp, movie_id), not by timestamp alone;
* the split is "last" (each user's last example is test) instead of a random shuffle;
* the output is train/ and test/ GZIP TFRecords plus vocab.tsv (counts = train labels).

It is a benchmark baseline (bench/prep.py), not part of the job.
"""
from __future__ import annotations

import collections
import os
import re
import time

import pandas as pd
import tensorflow as tf
from absl import app, flags

from beam_jobs import schema

FLAGS = flags.FLAGS
flags.DEFINE_string("input_dir", None, "Directory with ratings.dat + movies.dat (or .csv).")
flags.DEFINE_string("output_dir", None, "Output directory.")
flags.DEFINE_float("min_rating", 2.0, "Keep ratings >= this.")
flags.DEFINE_integer("min_timeline_length", 3, "Skip users with fewer kept ratings.")
flags.DEFINE_integer("max_context_length", 10, "Context movies per example.")
flags.DEFINE_integer("max_context_movie_genre_length", 10, "Context genres per example.")

RATINGS_DATA_COLUMNS = ["UserID", "MovieID", "Rating", "Timestamp"]
MOVIES_DATA_COLUMNS = ["MovieID", "Title", "Genres"]


class MovieInfo(
        collections.namedtuple("MovieInfo",
                               ["movie_id", "timestamp", "rating", "title", "genres"])):
    """One movie of a timeline (or of the movies table)."""
    __slots__ = ()

    def __new__(cls, movie_id=schema.PAD_MOVIE_ID, timestamp=0, rating=schema.PAD_RATING,
                title="", genres=""):
        return super().__new__(cls, movie_id, timestamp, rating, title, genres)


def read_data(input_dir, min_rating=None):
    """Reads the ratings and movies files into dataframes (ML-1M .dat or ML-20M .csv)."""
    if os.path.exists(os.path.join(input_dir, "ratings.dat")):
        ratings_df = pd.read_csv(os.path.join(input_dir, "ratings.dat"), sep="::",
                                 names=RATINGS_DATA_COLUMNS, encoding="latin-1",
                                 engine="python")
        movies_df = pd.read_csv(os.path.join(input_dir, "movies.dat"), sep="::",
                                names=MOVIES_DATA_COLUMNS, encoding="latin-1", engine="python")
    else:
        ratings_df = pd.read_csv(os.path.join(input_dir, "ratings.csv"), header=0,
                                 names=RATINGS_DATA_COLUMNS)
        movies_df = pd.read_csv(os.path.join(input_dir, "movies.csv"), header=0,
                                names=MOVIES_DATA_COLUMNS, encoding="utf-8")
    ratings_df["Timestamp"] = ratings_df["Timestamp"].apply(int)
    if min_rating is not None:
        ratings_df = ratings_df[ratings_df["Rating"] >= min_rating]
    return ratings_df, movies_df


def convert_to_timelines(ratings_df):
    """Groups ratings into per-user timelines ordered by (timestamp, movie_id)."""
    timelines = collections.defaultdict(list)
    for user_id, movie_id, rating, timestamp in ratings_df.values:
        timelines[int(user_id)].append(
            MovieInfo(movie_id=int(movie_id), timestamp=int(timestamp), rating=float(rating)))
    for user_id, context in timelines.items():
        context.sort(key=lambda x: (x.timestamp, x.movie_id))
        timelines[user_id] = context
    return timelines


def generate_movies_dict(movies_df):
    movies_dict = {
        int(movie_id): MovieInfo(movie_id=int(movie_id), title=title.strip(),
                                 genres=genres.strip())
        for movie_id, title, genres in movies_df.values
    }
    movies_dict[0] = MovieInfo()
    return movies_dict


def extract_year_from_title(title):
    year = re.search(r"\((\d{4})\)\s*$", title)
    return int(year.group(1)) if year else schema.PAD_YEAR


def generate_movie_genres(movies_dict, movies):
    movie_genres = []
    for movie in movies:
        if not movies_dict[movie.movie_id].genres:
            continue
        movie_genres.extend(
            tf.compat.as_bytes(g) for g in movies_dict[movie.movie_id].genres.split("|") if g)
    return movie_genres


def _pad_or_truncate(feature, max_len, pad_value):
    feature.extend([pad_value] * (max_len - len(feature)))
    return feature[:max_len]


def generate_examples_from_single_timeline(timeline, movies_dict, max_context_len,
                                           max_context_movie_genre_len):
    """One tf.train.Example per position >= 1 of the timeline, oldest first."""
    examples = []
    for label_idx in range(1, len(timeline)):
        start_idx = max(0, label_idx - max_context_len)
        context = timeline[start_idx:label_idx]
        while len(context) < max_context_len:
            context.append(MovieInfo())
        genres = _pad_or_truncate(generate_movie_genres(movies_dict, context),
                                  max_context_movie_genre_len, schema.PAD_GENRE)
        feature = {
            schema.CONTEXT_MOVIE_ID: tf.train.Feature(
                int64_list=tf.train.Int64List(value=[m.movie_id for m in context])),
            schema.CONTEXT_MOVIE_RATING: tf.train.Feature(
                float_list=tf.train.FloatList(value=[m.rating for m in context])),
            schema.CONTEXT_MOVIE_GENRE: tf.train.Feature(
                bytes_list=tf.train.BytesList(value=genres)),
            schema.CONTEXT_MOVIE_YEAR: tf.train.Feature(int64_list=tf.train.Int64List(
                value=[extract_year_from_title(movies_dict[m.movie_id].title)
                       for m in context])),
            schema.LABEL_MOVIE_ID: tf.train.Feature(
                int64_list=tf.train.Int64List(value=[timeline[label_idx].movie_id])),
        }
        examples.append(tf.train.Example(features=tf.train.Features(feature=feature)))
    return examples


def generate_examples_from_timelines(timelines, movies_dict, min_timeline_len, max_context_len,
                                     max_context_movie_genre_len):
    """Split "last": each user's last example is test, all others train."""
    train_examples, test_examples = [], []
    label_counts = collections.Counter()
    for timeline in timelines.values():
        if len(timeline) < min_timeline_len:
            continue
        examples = generate_examples_from_single_timeline(
            timeline, movies_dict, max_context_len, max_context_movie_genre_len)
        train_examples.extend(examples[:-1])
        test_examples.append(examples[-1])
        label_counts.update(m.movie_id for m in timeline[1:-1])
    return train_examples, test_examples, label_counts


def write_tfrecords(tf_examples, filename):
    with tf.io.TFRecordWriter(filename, options="GZIP") as writer:
        for example in tf_examples:
            writer.write(example.SerializeToString())
    return len(tf_examples)


def write_vocab(movies_df, label_counts, filename):
    vocab = []
    for movie_id, title, genres in movies_df.values:
        vocab.append([int(movie_id), label_counts.get(int(movie_id), 0), title.strip(),
                      genres.strip()])
    vocab.sort(key=lambda x: (-x[1], x[0]))
    with open(filename, "w", encoding="utf-8") as f:
        f.write("\t".join(schema.VOCAB_COLUMNS) + "\n")
        for movie_id, count, title, genres in vocab:
            row = schema.format_vocab_row(movie_id, count, extract_year_from_title(title),
                                          title, genres)
            f.write(row + "\n")


def main(argv):
    del argv
    t = time.perf_counter()
    ratings_df, movies_df = read_data(FLAGS.input_dir, FLAGS.min_rating)
    timelines = convert_to_timelines(ratings_df)
    train, test, label_counts = generate_examples_from_timelines(
        timelines, generate_movies_dict(movies_df), FLAGS.min_timeline_length,
        FLAGS.max_context_length, FLAGS.max_context_movie_genre_length)
    counts = {}
    for split, examples in ((schema.TRAIN, train), (schema.TEST, test)):
        os.makedirs(os.path.join(FLAGS.output_dir, split), exist_ok=True)
        counts[split] = write_tfrecords(
            examples, os.path.join(FLAGS.output_dir, split, schema.shard_name(0, 1)))
    write_vocab(movies_df, label_counts, os.path.join(FLAGS.output_dir, schema.VOCAB_FILE))
    print({"examples": counts, "seconds": round(time.perf_counter() - t, 2)})


if __name__ == "__main__":
    flags.mark_flags_as_required(["input_dir", "output_dir"])
    app.run(main)
