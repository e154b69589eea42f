"""Input: a finished Beam job output (data_dir) -> tf.data pipelines.

Everything is read through tf.io.gfile / tf.data, so data_dir may be a local
path or a gs:// URI. Nothing needs to fit in memory: shards are streamed.

Training pipeline, per input pipeline (one per worker):
  shard files (shuffled per epoch) -> parallel interleave of TFRecordDatasets
  -> DATA sharding across input pipelines -> shuffle (seeded per epoch)
  -> batch (per-replica size) -> [skip batches already trained on]
  -> batched tf.io.parse_example -> prefetch.
Batching before parsing parses a whole batch in one op instead of one op per
record.

Integrity: load_data_dir verifies, before anything trains, that _SUCCESS commits
to metadata.json and that every shard is the one metadata.json's manifest lists
(name, size, SHA-256), and refuses shards the manifest does not list. While
training and evaluating, each pass over a split must yield exactly the examples
metadata.json counts (tf.data's assert_cardinality): a shard truncated where
TensorFlow's gzip reader sees a clean end of file cannot shorten a split
unnoticed. Measured (every cut offset that reads without an error): inside the
10-byte header (0 records) or the 8-byte trailer (all records), always; inside
the deflate data, 61 of 1,000 sampled offsets of a 198 KB Beam shard and 869 of
4,342 of a 4 KB TFRecordWriter shard (fewer records); at a boundary between
gzip members, always. A failure names the shard (`find_bad_shard`,
`reading_failed`).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import fnmatch
import hashlib
import re
import threading
import time
import zlib

import tensorflow as tf
from absl import logging

from beam_jobs import schema


class DataError(ValueError):
    """A data_dir, or a file in it, the trainer cannot use."""


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What the trainer needs to know about a data_dir, read from the data itself.

    Attributes:
      data_dir: the URI it was read from.
      metadata: parsed metadata.json.
      movie_ids: vocabulary, most frequent first (vocab.tsv order).
      counts: train-split count of each movie of `movie_ids`.
      context_length: L, ids per context (metadata flags).
      compression: "gzip" or "none".
      files: split name -> shard URIs, in shard order.
      num_examples: split name -> example count (metadata counts).
      shard_examples: shard URI -> its example count, from metadata.json's
        manifest; empty for a data_dir written before manifests (unverified).
      years, genres: each movie's release year (0: unknown) and "|"-separated
        genres, aligned with `movie_ids` (vocab.tsv).
    """

    data_dir: str
    metadata: dict
    movie_ids: tuple[int, ...]
    counts: tuple[int, ...]
    context_length: int
    compression: str
    files: dict
    num_examples: dict
    shard_examples: dict = dataclasses.field(default_factory=dict)
    years: tuple[int, ...] = ()
    genres: tuple[str, ...] = ()

    @property
    def tf_compression(self) -> str:
        return schema.tf_compression_type(self.compression)

    @property
    def verified(self) -> bool:
        """Whether the shards were checked against a manifest (load_data_dir)."""
        return bool(self.shard_examples)


# Shards are hashed in chunks of this size (memory stays flat), a few at a time
# (GFile reads and hashlib release the GIL; on gs:// each read waits on the network).
HASH_CHUNK_BYTES = 8 << 20
HASH_THREADS = 4
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _read_bytes(path: str) -> bytes:
    """A file's bytes; a DataError naming it when it is missing, a directory or
    unreadable."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    except tf.errors.OpError as e:
        why = ("a directory, not a file" if tf.io.gfile.isdir(path)
               else f"cannot read it ({(e.message or str(e)).splitlines()[0]})")
        raise DataError(f"{path}: {why}") from None


def _text(raw: bytes, path: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None


def load_data_dir(data_dir: str) -> DataInfo:
    """Reads and checks data_dir's marker, metadata, vocabulary and shards.

    In order: data_dir is a directory; _SUCCESS exists and commits to
    metadata.json's bytes (schema.check_success); metadata.json is schema
    version 1; vocab.tsv parses. Then the shards. With a manifest in
    metadata.json: each split directory holds exactly the listed shards (names
    matching schema.SHARD_GLOB; other names, such as the `.tmp-*` files a
    crashed writer attempt leaves, are never read and are ignored), each of the
    listed size and SHA-256 (`verify_shards`: every byte is read once, up
    front), and the listed example counts add up to metadata.json's counts.
    Without a manifest (a data_dir written before manifests existed): the
    shards matching SHARD_GLOB, unverified, with one logged warning.

    Raises:
      DataError / schema.SchemaError naming the offending file or directory.
    """
    if not tf.io.gfile.isdir(data_dir):
        what = "is a file, not a directory" if tf.io.gfile.exists(data_dir) else "does not exist"
        raise DataError(f"--data_dir={data_dir} {what}: give the directory the Beam job "
                        "wrote (its --output_dir)")
    success = schema.join(data_dir, schema.SUCCESS_FILE)
    if not tf.io.gfile.exists(success):
        raise DataError(
            f"{data_dir}: no {schema.SUCCESS_FILE} marker; the Beam job that writes this "
            "data_dir did not finish (or --data_dir points elsewhere). Rerun beam_jobs.pipeline."
        )
    metadata_path = schema.join(data_dir, schema.METADATA_FILE)
    if not tf.io.gfile.exists(metadata_path):
        raise DataError(f"{metadata_path}: missing")
    metadata_bytes = _read_bytes(metadata_path)
    metadata = schema.loads_metadata(_text(metadata_bytes, metadata_path), metadata_path)
    committed = schema.check_success(_read_bytes(success), metadata_bytes, success)

    vocab_path = schema.join(data_dir, schema.VOCAB_FILE)
    if not tf.io.gfile.exists(vocab_path):
        raise DataError(f"{vocab_path}: missing")
    vocab_bytes = _read_bytes(vocab_path)
    rows = schema.parse_vocab(_text(vocab_bytes, vocab_path), vocab_path)
    if not rows:
        raise DataError(f"{vocab_path}: no movies")

    if schema.MANIFEST in metadata:
        if not committed:  # the manifest vouches for nothing if metadata is not this run's
            raise schema.SchemaError(
                f"{success} is empty, but {metadata_path} has a manifest: the two are not from "
                "one run of the Beam job. Rerun it into an empty --output_dir.")
        manifest = check_manifest(metadata, metadata_path)
        files = {split: [schema.join(data_dir, split, e["name"]) for e in manifest[split]]
                 for split in _splits(metadata)}
        shard_examples = {schema.join(data_dir, split, e["name"]): e["examples"]
                          for split in files for e in manifest[split]}
        verify_shards(data_dir, manifest, metadata_path)
        _verify_vocab(vocab_bytes, vocab_path, metadata, metadata_path)
    else:
        logging.warning("%s has no shard manifest (written before beam_jobs recorded one): "
                        "its shards were not verified, and a truncated shard may go unnoticed. "
                        "Rerun beam_jobs.pipeline to have them checked.", metadata_path)
        files, shard_examples = _glob_shards(data_dir, metadata, metadata_path), {}
    for split in files:
        if not files[split]:
            raise DataError(f"{schema.join(data_dir, split, schema.SHARD_GLOB)}: no shards; "
                            f"the {split} split of {data_dir} is empty")

    kinds = {"gzip" if f.endswith(".gz") else "none" for split in files for f in files[split]}
    if len(kinds) > 1:
        raise DataError(f"{data_dir}: mixed compressed and uncompressed shards")
    compression = metadata.get("flags", {}).get("compression", kinds.pop())
    if compression not in schema.COMPRESSIONS:
        raise DataError(f"{metadata_path}: unknown compression {compression!r}")

    feats = {f.name: f for f in schema.features_from_metadata(metadata)}
    return DataInfo(
        data_dir=data_dir,
        metadata=metadata,
        movie_ids=tuple(r["movie_id"] for r in rows),
        counts=tuple(r["count"] for r in rows),
        context_length=feats[schema.CONTEXT_MOVIE_ID].length,
        compression=compression,
        files=files,
        num_examples={split: int(metadata["counts"].get(f"{split}_examples", 0))
                      for split in files},
        shard_examples=shard_examples,
        years=tuple(r["year"] for r in rows),
        genres=tuple(r["genres"] for r in rows),
    )


def _splits(metadata: dict) -> tuple[str, ...]:
    """The example splits a data_dir has: train and test, and validation when its
    manifest lists one (schema.example_splits)."""
    return schema.example_splits(metadata) if isinstance(metadata.get(schema.MANIFEST), dict) \
        else schema.SPLITS


def eval_splits(info: DataInfo) -> tuple[str, ...]:
    """The splits the end of a run evaluates: validation (when present), then test."""
    return tuple(s for s in (schema.VALIDATION, schema.TEST) if s in info.files)


def eval_split(info: DataInfo, choice: str) -> str:
    """The split --eval_split=`choice` (auto, validation or test) evaluates after
    every epoch.

    Raises:
      DataError: validation asked for, and the data_dir has none.
    """
    if choice == "auto":
        return eval_splits(info)[0]
    if choice not in info.files:
        raise DataError(
            f"--eval_split={choice}: {info.data_dir} has no {choice} split (written by a "
            "beam_jobs.pipeline before validation splits existed, or with --split=random or "
            "--novalidation); rerun it with --split=last, or pass --eval_split=test")
    return choice


def check_seen(info: DataInfo) -> None:
    """Whether the evaluation splits' examples carry seen_movie_id, which
    --eval_exclude_seen needs (schema.has_seen_movie_ids).

    Raises:
      DataError naming metadata.json when they do not.
    """
    if not schema.has_seen_movie_ids(info.metadata):
        raise DataError(
            f"--eval_exclude_seen: the examples of {info.data_dir} have no "
            f"{schema.SEEN_MOVIE_ID} ({schema.METADATA_FILE}: written by a beam_jobs.pipeline "
            "before the feature existed, or with --novalidation); rebuild the data_dir with the "
            "current job")


def _verify_vocab(vocab_bytes: bytes, vocab_path: str, metadata: dict,
                  metadata_path: str) -> None:
    """vocab.tsv must be the one metadata.json's "files" lists (size and SHA-256), when
    it lists one: another run's vocabulary would silently renumber every movie."""
    listed = metadata.get(schema.FILES, {}).get(schema.VOCAB_FILE)
    if listed is None:
        return
    digest = hashlib.sha256(vocab_bytes).hexdigest()
    if len(vocab_bytes) != listed.get("bytes") or digest != listed.get("sha256"):
        raise DataError(f"{vocab_path}: not the vocab.tsv {metadata_path} lists ({len(vocab_bytes)}"
                        f" bytes, SHA-256 {digest[:16]}...): the data_dir holds files of more "
                        "than one run. Rerun beam_jobs.pipeline into an empty --output_dir.")


def _glob_shards(data_dir: str, metadata: dict, metadata_path: str) -> dict:
    """Unverified data_dirs: split -> the sorted shards matching SHARD_GLOB, checked
    against metadata.json's shard name lists (when they are lists of names)."""
    files = {}
    for split in schema.SPLITS:
        pattern = schema.join(data_dir, split, schema.SHARD_GLOB)
        found = sorted(tf.io.gfile.glob(pattern))
        if not found:
            raise DataError(f"{pattern}: no shards; the {split} split of {data_dir} is empty")
        listed = metadata["shards"].get(split) if isinstance(metadata["shards"], dict) else None
        if isinstance(listed, list) and listed and all(isinstance(s, str) for s in listed):
            missing = sorted({s.rsplit("/", 1)[-1] for s in listed}
                             - {f.rsplit("/", 1)[-1] for f in found})
            if missing:
                raise DataError(f"{schema.join(data_dir, split)}: shards listed in "
                                f"{metadata_path} are missing: {missing}")
        files[split] = found
    return files


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_manifest(metadata: dict, metadata_path: str) -> dict:
    """metadata.json's manifest, checked for form: {split: [{"name", "bytes",
    "sha256", "examples"}, ...]} for every split, names matching SHARD_GLOB,
    example counts adding up to metadata.json's counts. Returns it.

    Raises:
      schema.SchemaError naming metadata_path and the entry.
    """
    manifest = metadata[schema.MANIFEST]
    if not isinstance(manifest, dict):
        raise schema.SchemaError(f"{metadata_path}: {schema.MANIFEST!r} must map each split "
                                 "to its list of shards")
    for split in _splits(metadata):
        entries = manifest.get(split)
        if not isinstance(entries, list):
            raise schema.SchemaError(f"{metadata_path}: the manifest has no {split!r} list")
        for i, e in enumerate(entries):
            if not (isinstance(e, dict) and isinstance(e.get("name"), str)
                    and "/" not in e["name"] and fnmatch.fnmatchcase(e["name"], schema.SHARD_GLOB)
                    and _is_count(e.get("bytes")) and _is_count(e.get("examples"))
                    and isinstance(e.get("sha256"), str) and _SHA256.fullmatch(e["sha256"])):
                raise schema.SchemaError(
                    f"{metadata_path}: manifest entry {split}[{i}] is not "
                    f'{{"name": "part-...", "bytes": N, "sha256": "<64 hex>", "examples": N}}: '
                    f"{str(e)[:200]}")
        listed = sum(e["examples"] for e in entries)
        counted = metadata["counts"].get(f"{split}_examples")
        if listed != counted:
            raise schema.SchemaError(f"{metadata_path}: the manifest lists {listed} {split} "
                                     f"examples, its counts say {counted}")
    return manifest


def sha256_of(path: str) -> str:
    """Hex SHA-256 of a file (local or gs://), streamed in HASH_CHUNK_BYTES chunks."""
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify_shards(data_dir: str, manifest: dict, metadata_path: str) -> None:
    """Checks the shards on storage against the manifest (see load_data_dir).

    Cheap checks first, for every shard (listing, sizes: a truncated shard is
    named without reading anything), then the SHA-256 of every shard.

    Raises:
      DataError naming the first shard at fault (in shard order).
    """
    started, total_bytes, uris = time.monotonic(), 0, []
    rebuild = "rerun beam_jobs.pipeline into an empty --output_dir (or restore the file)"
    for split in _splits({schema.MANIFEST: manifest}):
        listed = {e["name"]: e for e in manifest[split]}
        found = {f.rsplit("/", 1)[-1] for f in
                 tf.io.gfile.glob(schema.join(data_dir, split, schema.SHARD_GLOB))}
        unlisted = sorted(found - set(listed))
        if unlisted:
            more = f" (and {len(unlisted) - 1} more)" if len(unlisted) > 1 else ""
            raise DataError(
                f"{schema.join(data_dir, split, unlisted[0])}{more}: a shard {metadata_path} "
                "does not list: the data_dir holds files of more than one run. Rerun "
                "beam_jobs.pipeline into an empty --output_dir.")
        for name, e in listed.items():
            uri = schema.join(data_dir, split, name)
            if name not in found:
                raise DataError(f"{uri}: missing (listed in {metadata_path}); {rebuild}")
            stat = tf.io.gfile.stat(uri)
            if stat.is_directory:
                raise DataError(f"{uri}: a directory, not a shard file; {rebuild}")
            size = stat.length
            if size != e["bytes"]:
                raise DataError(f"{uri}: {size} bytes, but {metadata_path} lists {e['bytes']}: "
                                f"truncated or replaced since the Beam job wrote it; {rebuild}")
            uris.append((uri, e["sha256"]))
            total_bytes += size
    with concurrent.futures.ThreadPoolExecutor(HASH_THREADS) as pool:
        digests = list(pool.map(sha256_of, [uri for uri, _ in uris]))
    for (uri, expected), actual in zip(uris, digests, strict=True):
        if actual != expected:
            raise DataError(f"{uri}: SHA-256 {actual[:16]}..., but {metadata_path} lists "
                            f"{expected[:16]}...: its bytes changed since the Beam job wrote "
                            f"it; {rebuild}")
    logging.info("Verified %d shards (%.1f MB) against %s in %.1f s", len(uris),
                 total_bytes / 1e6, metadata_path, time.monotonic() - started)


def feature_spec(context_length: int, seen: bool = False) -> dict:
    """parse_example spec of the features the model reads (and, with `seen`, the
    evaluation's seen_movie_id).

    The label is parsed as a SCALAR (shape []): a [B, 1] label would reach the
    candidate tower as [B, 1] and silently transpose TFRS's score matrix.
    """
    spec = {
        schema.CONTEXT_MOVIE_ID: tf.io.FixedLenFeature([context_length], tf.int64),
        schema.LABEL_MOVIE_ID: tf.io.FixedLenFeature([], tf.int64),
    }
    if seen:
        spec[schema.SEEN_MOVIE_ID] = tf.io.VarLenFeature(tf.int64)
    return spec


def parse_batch(serialized: tf.Tensor, context_length: int, seen: bool = False) -> dict:
    """Serialized tf.train.Example strings [B] -> {"context_movie_id": int64 [B, L],
    "label_movie_id": int64 [B]}, plus "seen_movie_id" int64 SparseTensor [B, n]
    with `seen`."""
    return tf.io.parse_example(serialized, feature_spec(context_length, seen))


def steps_per_epoch(info: DataInfo, global_batch_size: int) -> int:
    """Full global batches per epoch (the remainder is dropped, so every replica
    gets a full batch and the loss scaling by the global batch stays exact).

    Raises:
      DataError: the train split is empty, or smaller than one global batch.
    """
    examples = info.num_examples[schema.TRAIN]
    if examples == 0:
        raise DataError(
            f"{info.data_dir}: the train split holds no examples ({schema.METADATA_FILE} counts "
            "0 train_examples), so there is nothing to train on. Rebuild the data_dir from more "
            "ratings, or check beam_jobs.pipeline's --min_rating, --min_timeline_length and "
            "--split/--train_fraction.")
    steps = examples // global_batch_size
    if steps < 1:
        raise DataError(
            f"{info.data_dir}: {examples} train examples is less than one global batch "
            f"(--global_batch_size={global_batch_size}); lower --global_batch_size"
        )
    return steps


def check_sizes(info: DataInfo, global_batch_size: int) -> None:
    """Refuses, before training, a data_dir too small to train or evaluate on.

    Raises:
      DataError: see steps_per_epoch; or the test split is empty (the run ends
        with an evaluation on it).
    """
    steps_per_epoch(info, global_batch_size)
    if info.num_examples[schema.TEST] == 0:
        raise DataError(
            f"{info.data_dir}: the test split holds no examples ({schema.METADATA_FILE} counts "
            "0 test_examples); evaluation needs some. Rebuild the data_dir with "
            "beam_jobs.pipeline --split=last (one test example a user).")


class Batches:
    """The run's one iterator over a distributed dataset: `next(batches)` is the
    next step's per-replica batches. Leaving the `with` block hands the iterator
    to a daemon thread that drops it there.

    Why: destroying a tf.data iterator joins its autotune thread, which can sit
    in a timed wait of up to 60 s that the destruction does not wake (TF 2.21;
    docs/design.md). Dropped here, that wait holds up nothing: the thread
    releases the GIL while it waits, and the process may exit under it.
    """

    def __init__(self, dataset):
        self._iterator = iter(dataset)

    def __next__(self):
        return next(self._iterator)

    def __enter__(self) -> Batches:
        return self

    def __exit__(self, *exc) -> None:
        box = [self._iterator]
        self._iterator = None
        threading.Thread(target=box.clear, name="release-train-iterator", daemon=True).start()


def epoch_seed(seed: int, epoch):
    """The shuffle seed of `epoch` (int or int64 tensor): the same every run, so a
    resumed run sees the same order and can skip what it already trained on."""
    return tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64)


def make_train_dataset(
    info: DataInfo,
    global_batch_size: int,
    epochs: int,
    seed: int,
    shuffle_buffer: int,
    input_context: tf.distribute.InputContext | None = None,
    start_step: int = 0,
) -> tf.data.Dataset:
    """The whole run's training stream for one input pipeline, from `start_step` on.

    One dataset (hence one iterator) spans all remaining epochs: recreating
    AUTOTUNE iterators per epoch blocked 10-38 s at every epoch end here.

    Args:
      info: from load_data_dir.
      global_batch_size: examples per step over all replicas.
      epochs: total epochs of the run.
      seed: run seed; epoch e shuffles with epoch_seed(seed, e).
      shuffle_buffer: examples buffered for shuffling.
      input_context: from strategy.distribute_datasets_from_function (None:
        one pipeline, one replica).
      start_step: global steps already trained; they are skipped (raw, before
        parsing), so a resumed run continues exactly where the last checkpoint was.

    Returns:
      Dataset of feature dicts with per-replica batches:
      "context_movie_id" int64 [b, L], "label_movie_id" int64 [b],
      b = global_batch_size / replicas. Yields exactly
      (epochs * steps_per_epoch - start_step) * local_replicas batches.
    """
    ctx = input_context or tf.distribute.InputContext()
    per_replica = ctx.get_per_replica_batch_size(global_batch_size)
    steps = steps_per_epoch(info, global_batch_size)
    # Each step takes one batch per replica of this pipeline's worker.
    local_replicas = ctx.num_replicas_in_sync // ctx.num_input_pipelines
    batches_per_epoch = steps * local_replicas
    start_epoch, skip_steps = divmod(start_step, steps)
    files = tf.constant(info.files[schema.TRAIN])
    compression = info.tf_compression
    examples = info.num_examples[schema.TRAIN]

    def one_epoch(epoch):
        s = epoch_seed(seed, epoch)
        records = (
            tf.data.Dataset.from_tensor_slices(files)
            .shuffle(len(info.files[schema.TRAIN]), seed=s)
            .interleave(
                lambda f: tf.data.TFRecordDataset(f, compression_type=compression),
                cycle_length=min(len(info.files[schema.TRAIN]), 8),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )
            # Every pipeline reads every record (see below), so each epoch's
            # stream must hold exactly the split's examples: fewer (a shard cut
            # where gzip reads a clean end of file) or more fails the step with
            # FailedPreconditionError, instead of silently starting the next epoch
            # early. Costs nothing measurable (a counter).
            .apply(tf.data.experimental.assert_cardinality(examples))
            # DATA sharding: every pipeline reads every file and keeps every
            # n-th record. FILE sharding fails when a split has fewer files than
            # workers, and uneven files would give workers unequal step counts
            # (a worker that runs out first leaves the others waiting forever).
            # With DATA sharding each pipeline holds >= steps * local_replicas
            # full batches per epoch.
            .shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
            .shuffle(shuffle_buffer, seed=s, reshuffle_each_iteration=False)
        )
        return records.batch(per_replica, drop_remainder=True).take(batches_per_epoch)

    ds = tf.data.Dataset.range(start_epoch, epochs).flat_map(one_epoch)
    ds = ds.skip(skip_steps * local_replicas)
    ds = ds.map(
        lambda x: parse_batch(x, info.context_length),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return ds.prefetch(tf.data.AUTOTUNE)


def make_eval_dataset(info: DataInfo, batch_size: int, split: str = schema.TEST,
                      seen: bool = False) -> tf.data.Dataset:
    """A split, once, in file order: feature dicts "context_movie_id" int64 [B, L],
    "label_movie_id" int64 [B] (the last batch may be smaller), plus with `seen`
    "seen_movie_id" int64 SparseTensor [B, n] (check_seen says whether the data has it).

    A pass that yields other than the split's example count (metadata.json)
    fails with FailedPreconditionError at its end (see reading_failed)."""
    ds = tf.data.TFRecordDataset(
        tf.constant(info.files[split]), compression_type=info.tf_compression
    ).apply(tf.data.experimental.assert_cardinality(info.num_examples[split]))
    ds = ds.batch(batch_size).map(
        lambda x: parse_batch(x, info.context_length, seen), num_parallel_calls=tf.data.AUTOTUNE
    )
    return ds.prefetch(tf.data.AUTOTUNE)


# What reading a split raises when a shard is damaged, truncated or replaced
# (assert_cardinality's count mismatch is a FailedPreconditionError).
READ_ERRORS = (tf.errors.DataLossError, tf.errors.InvalidArgumentError,
               tf.errors.FailedPreconditionError, tf.errors.OutOfRangeError, StopIteration)
# tf.data.experimental.assert_cardinality's message.
_COUNT_MISMATCH = re.compile(r"expected to contain \d+ elements? but contained (only|at least) "
                             r"(\d+) element")


def _gzip_complete(path: str) -> bool:
    """Whether a gzip file ends with a complete member (the end marker and trailer
    of its last member are there). Concatenated members are allowed, so a file
    cut exactly between two members still reads as complete."""
    decompressor = zlib.decompressobj(31)
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            while chunk := f.read(HASH_CHUNK_BYTES):
                while chunk:
                    if decompressor.eof:  # another member follows
                        decompressor = zlib.decompressobj(31)
                    decompressor.decompress(chunk)
                    chunk = decompressor.unused_data if decompressor.eof else b""
    except zlib.error:
        return False
    return decompressor.eof


def find_bad_shard(info: DataInfo, splits=None) -> tuple[str, str] | None:
    """Reads every shard to the end, one at a time, parsing each record.

    Returns:
      (file, what is wrong) of the first shard that does not read whole: a read
      or parse error, a record count other than the manifest's, or (gzip) a
      stream that ends before its end marker; None when every shard reads whole.
    Used after reading a split failed or came up short: the interleaved
    stream's errors do not say which file is at fault.
    """
    for split in splits or info.files:
        for f in info.files[split]:
            ds = tf.data.TFRecordDataset(f, compression_type=info.tf_compression).batch(4096)
            ds = ds.map(lambda x: parse_batch(x, info.context_length))
            records = 0
            try:
                for batch in ds:
                    records += int(tf.shape(batch[schema.LABEL_MOVIE_ID])[0])
            except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
                return f, f"unreadable shard ({e.message.splitlines()[0]})"
            expected = info.shard_examples.get(f)
            if expected is not None and records != expected:
                return f, (f"{records} records, but {schema.METADATA_FILE}'s manifest lists "
                           f"{expected}: truncated or replaced")
            if info.compression == "gzip" and not _gzip_complete(f):
                return f, (f"{records} records, then the gzip stream ends before its end "
                           "marker: truncated")
    return None


def reading_failed(info: DataInfo, split: str, error: BaseException, context: str
                   ) -> BaseException:
    """What to raise after reading `split` raised `error` (one of READ_ERRORS).

    Returns:
      a DataError naming the shard at fault (find_bad_shard) followed by
      `context` (e.g. "training stopped at step 12"); a DataError naming the
      split when it held other than metadata.json's count yet no single shard
      is to blame; else `error` itself (not the data's fault: e.g. an
      InvalidArgumentError raised by the model).
    """
    bad = find_bad_shard(info, (split,))
    if bad:
        return DataError(f"{bad[0]}: {bad[1]}; {context}")
    counted = f"the {info.num_examples[split]} examples {schema.METADATA_FILE} counts"
    if isinstance(error, (tf.errors.OutOfRangeError, StopIteration)):
        held = f"ended before {counted}"
    else:
        found = _COUNT_MISMATCH.search(getattr(error, "message", "") or "")
        if not found:
            return error
        held = f"held {found.group(1)} {found.group(2)} examples, not {counted}"
    return DataError(
        f"{schema.join(info.data_dir, split)}: the {split} split {held}, yet each shard reads "
        f"whole (records lost at a gzip member boundary, or a {schema.METADATA_FILE} of other "
        f"data); {context}. Rebuild the data_dir with beam_jobs.pipeline.")


def check_first_records(info: DataInfo) -> None:
    """Cheap preflight: each shard's first record reads and parses.

    Catches wrong compression, truncated headers and files of another format
    before training starts, naming the file. (Damage further inside a shard is
    caught while training; see find_bad_shard.)
    """
    for split in info.files:
        for f in info.files[split]:
            ds = tf.data.TFRecordDataset(f, compression_type=info.tf_compression).take(1).batch(1)
            try:
                for batch in ds:
                    parse_batch(batch, info.context_length)
            except (tf.errors.DataLossError, tf.errors.InvalidArgumentError,
                    tf.errors.FailedPreconditionError) as e:  # the last: a directory
                raise DataError(f"{f}: unreadable shard ({e.message.splitlines()[0]})") from None
