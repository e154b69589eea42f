"""Helpers for the beam_jobs tests: tiny MovieLens inputs, reading the job's outputs back."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

from beam_jobs import schema

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLE = os.path.join(ROOT, "data", "sample")
VENV_BIN = os.path.dirname(sys.executable)


def plain_env(home) -> dict[str, str]:
    """The environment of a user's shell with the venv on PATH, and nothing else."""
    return {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(home)}


def run_job(input_dir, output_dir, *flags):
    """beam_jobs.pipeline.run in this process (DirectRunner); returns its PipelineResult."""
    from beam_jobs import pipeline

    return pipeline.run([f"--input_dir={input_dir}", f"--output_dir={output_dir}",
                         *map(str, flags)])


def run_command(argv, home, timeout=120) -> subprocess.CompletedProcess:
    """Runs argv as a user would (plain environment, from the repository root); text
    stdout/stderr captured."""
    return subprocess.run([str(a) for a in argv], env=plain_env(home), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)

# The golden input (see pipeline_test.test_golden_example for the hand-computed output).
GOLDEN_MOVIES = [
    "1::Toy Story (1995)::Animation|Children's|Comedy",
    "2::Jumanji (1995)::Adventure|Children's|Fantasy",
    "3::Heat::Action|Crime|Thriller",
    "4::Casino (1995)::Drama",
]
GOLDEN_RATINGS = [
    "7::3::4::978300200",
    "7::1::5::978300100",
    "7::4::1::978300150",
    "7::2::3::978300100",
    "9::1::5::1",
    "9::2::5::2",
]


def write_input(directory, ratings, movies, fmt="dat", encoding="latin-1") -> str:
    """Writes ratings/movies files (lists of lines or raw bytes) into `directory`."""
    os.makedirs(directory, exist_ok=True)
    for name, content in ((f"ratings.{fmt}", ratings), (f"movies.{fmt}", movies)):
        if content is None:
            continue
        data = content if isinstance(content, bytes) else (
            "".join(line + "\n" for line in content).encode(encoding))
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
    return str(directory)


def example_features(movie_ids, ratings, years, genres, position, max_context_length,
                     max_context_movie_genre_length, context_end=None) -> dict[str, list]:
    """Features of one example as Python lists: the contract's slow, obvious definition,
    the oracle the job's encoder is checked against.

    Args:
      movie_ids, ratings, years, genres: one user's timeline, already ordered; genres[j] is
        the list of genres of movie j.
      position: index of the label movie (>= 1).
      context_end: one past the context's last movie (1..position; None: position).
    Returns:
      {feature name: list} with the lengths of schema.features().
    """
    end = position if context_end is None else context_end
    start = max(0, end - max_context_length)
    pad = max_context_length - (end - start)
    flat = [g.encode() for j in range(start, end) for g in genres[j]]
    flat = flat[:max_context_movie_genre_length]
    return {
        schema.CONTEXT_MOVIE_ID: list(movie_ids[start:end]) + [schema.PAD_MOVIE_ID] * pad,
        schema.CONTEXT_MOVIE_RATING: list(ratings[start:end]) + [schema.PAD_RATING] * pad,
        schema.CONTEXT_MOVIE_YEAR: list(years[start:end]) + [schema.PAD_YEAR] * pad,
        schema.CONTEXT_MOVIE_GENRE: flat
        + [schema.PAD_GENRE] * (max_context_movie_genre_length - len(flat)),
        schema.LABEL_MOVIE_ID: [movie_ids[position]],
    }


def feature_spec(metadata=None, seen=False):
    """The parse spec of schema.features() (FixedLenFeature), plus seen_movie_id as a
    RaggedFeature when `seen` (held-out examples: schema.HELD_OUT_FEATURES)."""
    import tensorflow as tf

    features = schema.features_from_metadata(metadata) if metadata else schema.features()
    dtypes = {"int64": tf.int64, "float": tf.float32, "bytes": tf.string}
    spec = {f.name: tf.io.FixedLenFeature([f.length], dtypes[f.dtype]) for f in features}
    if seen:
        spec[schema.SEEN_MOVIE_ID] = tf.io.RaggedFeature(tf.int64)
    return spec


def read_split(output_dir, split, seen=False):
    """Every example of a split, in shard order, as {name: list} (read with tf.data and
    tf.io.parse_example, the way the trainer reads them); with `seen`, seen_movie_id too
    (a record without it then parses as [])."""
    import tensorflow as tf

    metadata = read_metadata(output_dir)
    files = [os.path.join(output_dir, split, n) for n in metadata["shards"][split]]
    ds = tf.data.TFRecordDataset(
        files, compression_type=schema.tf_compression_type(metadata["flags"]["compression"]))
    out = []
    for batch in ds.batch(4096):
        # One conversion per batch: per-example tensor indexing took 45 s on data/sample.
        parsed = {k: (v.to_list() if isinstance(v, tf.RaggedTensor) else v.numpy().tolist())
                  for k, v in tf.io.parse_example(batch, feature_spec(metadata, seen)).items()}
        out.extend(dict(zip(parsed, row, strict=True)) for row in zip(*parsed.values(),
                                                                      strict=True))
    return out


def read_users(output_dir):
    """Every users/ record in manifest order, as {feature: list of ints}."""
    import tensorflow as tf

    metadata = read_metadata(output_dir)
    compression = schema.tf_compression_type(metadata["flags"]["compression"])
    out = []
    for entry in metadata[schema.MANIFEST][schema.USERS]:
        path = os.path.join(output_dir, schema.USERS, entry["name"])
        for record in tf.data.TFRecordDataset(path, compression_type=compression):
            ex = tf.train.Example.FromString(record.numpy())
            out.append({k: list(v.int64_list.value) for k, v in ex.features.feature.items()})
    return out


def read_metadata(output_dir):
    with open(os.path.join(output_dir, schema.METADATA_FILE)) as f:
        return schema.loads_metadata(f.read(), output_dir)


def output_files(output_dir):
    """{relative path: bytes} of every file under output_dir, hidden ones (.tmp-...)
    included."""
    out = {}
    for d, _, names in os.walk(output_dir):
        for name in names:
            path = os.path.join(d, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, output_dir)] = f.read()
    return dict(sorted(out.items()))


def data_dir_problems(files: dict[str, bytes]) -> list[str] | None:
    """A reader's check of a data_dir given as {path relative to it: bytes}, written here
    from the contract (schema + hashlib), independently of the job's own check.

    Returns:
      None when there is no _SUCCESS (an unfinished data_dir: readers refuse it); else the
      problems, [] when _SUCCESS commits to metadata.json's bytes and train/, validation/,
      test/, errors/ and vocab.tsv hold exactly the files metadata.json lists ("manifest" and
      "files"), each with its size and SHA-256.
    """
    if schema.SUCCESS_FILE not in files:
        return None
    metadata_bytes = files.get(schema.METADATA_FILE, b"")
    try:
        if not schema.check_success(files[schema.SUCCESS_FILE], metadata_bytes, "data_dir"):
            return ["_SUCCESS is empty: it commits to no metadata.json"]
    except schema.SchemaError as e:
        return [str(e)]
    metadata = json.loads(metadata_bytes)
    expected = {f"{split}/{e['name']}": (e["bytes"], e["sha256"])
                for split in schema.example_splits(metadata)
                for e in metadata[schema.MANIFEST][split]}
    expected.update({path: (e["bytes"], e["sha256"]) for path, e in metadata["files"].items()})
    present = {p for p in files if p.split("/")[0] in (*schema.EXAMPLE_SPLITS, schema.ERRORS_DIR)
               or p == schema.VOCAB_FILE}
    problems = [f"{p}: not listed" for p in sorted(present - set(expected))]
    for path, (size, sha) in sorted(expected.items()):
        data = files.get(path)
        if data is None:
            problems.append(f"{path}: missing")
        elif (len(data), hashlib.sha256(data).hexdigest()) != (size, sha):
            problems.append(f"{path}: not the listed bytes")
    return problems


def counters(result):
    """{counter name: committed value} from a PipelineResult."""
    from apache_beam.metrics.metric import MetricsFilter

    res = result.metrics().query(MetricsFilter().with_namespace("seqrec"))
    totals = {}
    for c in res["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        totals[c.key.metric.name] = totals.get(c.key.metric.name, 0) + value
    return totals


def dumps(obj) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)
