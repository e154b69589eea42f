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
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

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
      files: split name -> sorted shard URIs.
      num_examples: split name -> example count (metadata counts).
    """

    data_dir: str
    metadata: dict
    movie_ids: tuple[int, ...]
    counts: tuple[int, ...]
    context_length: int
    compression: str
    files: dict
    num_examples: dict

    @property
    def tf_compression(self) -> str:
        return schema.tf_compression_type(self.compression)


def _read_text(path: str) -> str:
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read().decode("utf-8")


def load_data_dir(data_dir: str) -> DataInfo:
    """Reads and checks data_dir's marker, metadata, vocabulary and shard lists.

    Raises:
      DataError / schema.SchemaError naming the offending file or directory.
    """
    success = schema.join(data_dir, schema.SUCCESS_FILE)
    if not tf.io.gfile.exists(success):
        raise DataError(
            f"{data_dir}: no {schema.SUCCESS_FILE} marker; the Beam job that writes this "
            "data_dir did not finish (or --data_dir points elsewhere). Rerun beam_jobs.pipeline."
        )
    metadata_path = schema.join(data_dir, schema.METADATA_FILE)
    if not tf.io.gfile.exists(metadata_path):
        raise DataError(f"{metadata_path}: missing")
    metadata = schema.loads_metadata(_read_text(metadata_path), metadata_path)

    vocab_path = schema.join(data_dir, schema.VOCAB_FILE)
    if not tf.io.gfile.exists(vocab_path):
        raise DataError(f"{vocab_path}: missing")
    rows = schema.parse_vocab(_read_text(vocab_path), vocab_path)
    if not rows:
        raise DataError(f"{vocab_path}: no movies")

    flags = metadata.get("flags", {})
    files, num_examples = {}, {}
    compression = None
    for split in schema.SPLITS:
        pattern = schema.join(data_dir, split, schema.SHARD_GLOB)
        found = sorted(tf.io.gfile.glob(pattern))
        if not found:
            raise DataError(f"{pattern}: no shards; the {split} split of {data_dir} is empty")
        listed = metadata["shards"].get(split) if isinstance(metadata["shards"], dict) else None
        if isinstance(listed, list) and listed and all(isinstance(s, str) for s in listed):
            missing = sorted({s.rsplit("/", 1)[-1] for s in listed} - {f.rsplit("/", 1)[-1] for f in found})
            if missing:
                raise DataError(f"{schema.join(data_dir, split)}: shards listed in {metadata_path} are missing: {missing}")
        files[split] = found
        num_examples[split] = int(metadata["counts"].get(f"{split}_examples", 0))
        for f in found:
            kind = "gzip" if f.endswith(".gz") else "none"
            if compression not in (None, kind):
                raise DataError(f"{f}: mixed compressed and uncompressed shards in {data_dir}")
            compression = kind
    compression = flags.get("compression", compression)
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
        num_examples=num_examples,
    )


def feature_spec(context_length: int) -> dict:
    """parse_example spec of the features the model reads.

    The label is parsed as a SCALAR (shape []): a [B, 1] label would reach the
    candidate tower as [B, 1] and silently transpose TFRS's score matrix.
    """
    return {
        schema.CONTEXT_MOVIE_ID: tf.io.FixedLenFeature([context_length], tf.int64),
        schema.LABEL_MOVIE_ID: tf.io.FixedLenFeature([], tf.int64),
    }


def parse_batch(serialized: tf.Tensor, context_length: int) -> dict:
    """Serialized tf.train.Example strings [B] -> {"context_movie_id": int64 [B, L],
    "label_movie_id": int64 [B]}."""
    return tf.io.parse_example(serialized, feature_spec(context_length))


def steps_per_epoch(info: DataInfo, global_batch_size: int) -> int:
    """Full global batches per epoch (the remainder is dropped, so every replica
    gets a full batch and the loss scaling by the global batch stays exact)."""
    steps = info.num_examples[schema.TRAIN] // global_batch_size
    if steps < 1:
        raise DataError(
            f"{info.data_dir}: {info.num_examples[schema.TRAIN]} train examples is less than one "
            f"global batch (--global_batch_size={global_batch_size}); lower --global_batch_size"
        )
    return steps


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


def make_eval_dataset(info: DataInfo, batch_size: int, split: str = schema.TEST) -> tf.data.Dataset:
    """A split, once, in file order: feature dicts "context_movie_id" int64 [B, L],
    "label_movie_id" int64 [B] (the last batch may be smaller)."""
    ds = tf.data.TFRecordDataset(
        tf.constant(info.files[split]), compression_type=info.tf_compression
    )
    ds = ds.batch(batch_size).map(
        lambda x: parse_batch(x, info.context_length), num_parallel_calls=tf.data.AUTOTUNE
    )
    return ds.prefetch(tf.data.AUTOTUNE)


def find_bad_shard(info: DataInfo, splits=schema.SPLITS) -> tuple[str, str] | None:
    """Reads every shard to the end, one at a time, parsing each record.

    Returns:
      (file, error message) of the first unreadable shard, or None.
    Used after a DataLossError/InvalidArgumentError in the interleaved stream,
    whose message does not say which file failed.
    """
    for split in splits:
        for f in info.files[split]:
            ds = tf.data.TFRecordDataset(f, compression_type=info.tf_compression).batch(4096)
            ds = ds.map(lambda x: parse_batch(x, info.context_length))
            try:
                for _ in ds:
                    pass
            except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
                return f, e.message.splitlines()[0]
    return None


def check_first_records(info: DataInfo) -> None:
    """Cheap preflight: each shard's first record reads and parses.

    Catches wrong compression, truncated headers and files of another format
    before training starts, naming the file. (Damage further inside a shard is
    caught while training; see find_bad_shard.)
    """
    for split in schema.SPLITS:
        for f in info.files[split]:
            ds = tf.data.TFRecordDataset(f, compression_type=info.tf_compression).take(1).batch(1)
            try:
                for batch in ds:
                    parse_batch(batch, info.context_length)
            except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
                raise DataError(f"{f}: unreadable shard ({e.message.splitlines()[0]})") from None
