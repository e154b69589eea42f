"""Writes small data_dirs shaped exactly like beam_jobs' output (beam_jobs/schema.py).

Test-only: the trainer tests must not depend on the Beam job being importable or
fast. Like the Beam job, it writes metadata.json's manifest (every shard's name,
size, SHA-256 and example count) and a _SUCCESS that commits to metadata.json's
bytes; `manifest=False` writes a data_dir as beam_jobs did before manifests
(no manifest, empty _SUCCESS). The data is structured so a model can learn it: every user's timeline
follows one fixed successor permutation of the movies (movie m is always followed
by succ[m]), so the label is a function of the last context movie.
"""
from __future__ import annotations

import hashlib
import json
import os
import random

import tensorflow as tf

from beam_jobs import schema


def _example(context: list[int], label: int, length: int) -> bytes:
    pad = length - len(context)
    ids = context + [schema.PAD_MOVIE_ID] * pad
    f = tf.train.Feature
    feats = {
        schema.CONTEXT_MOVIE_ID: f(int64_list=tf.train.Int64List(value=ids)),
        schema.CONTEXT_MOVIE_RATING: f(float_list=tf.train.FloatList(value=[4.0] * len(context) + [schema.PAD_RATING] * pad)),
        schema.CONTEXT_MOVIE_YEAR: f(int64_list=tf.train.Int64List(value=[1999] * len(context) + [schema.PAD_YEAR] * pad)),
        schema.CONTEXT_MOVIE_GENRE: f(bytes_list=tf.train.BytesList(value=[b"Drama"] * len(context) + [schema.PAD_GENRE] * pad)),
        schema.LABEL_MOVIE_ID: f(int64_list=tf.train.Int64List(value=[label])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def write_data_dir(
    path: str,
    *,
    num_movies: int = 40,
    num_users: int = 120,
    timeline_length: int = 12,
    context_length: int = 10,
    train_shards: int = 3,
    test_shards: int = 1,
    compression: str = "gzip",
    seed: int = 0,
    schema_version: int = schema.SCHEMA_VERSION,
    success: bool = True,
    manifest: bool = True,
) -> dict:
    """Writes a data_dir at `path`; returns {"train_examples", "test_examples", "movie_ids"}."""
    rng = random.Random(seed)
    movie_ids = [7 * i + 3 for i in range(num_movies)]  # raw ids, not 0..n-1: tests the lookup
    order = movie_ids[:]
    rng.shuffle(order)
    succ = {order[i]: order[(i + 1) % num_movies] for i in range(num_movies)}

    examples = {schema.TRAIN: [], schema.TEST: []}
    counts = dict.fromkeys(movie_ids, 0)
    for _ in range(num_users):
        timeline = [rng.choice(movie_ids)]
        for _ in range(timeline_length - 1):
            timeline.append(succ[timeline[-1]])
        for i in range(1, len(timeline)):
            split = schema.TEST if i == len(timeline) - 1 else schema.TRAIN
            context = timeline[max(0, i - context_length):i]
            examples[split].append(_example(context, timeline[i], context_length))
            if split == schema.TRAIN:
                counts[timeline[i]] += 1

    shards, listed = {}, {}
    for split, n in ((schema.TRAIN, train_shards), (schema.TEST, test_shards)):
        os.makedirs(os.path.join(path, split), exist_ok=True)
        names = [schema.shard_name(i, n, compression) for i in range(n)]
        options = tf.io.TFRecordOptions(compression_type=schema.tf_compression_type(compression))
        listed[split] = []
        for i, name in enumerate(names):
            records = examples[split][i::n]
            with tf.io.TFRecordWriter(os.path.join(path, split, name), options) as w:
                for record in records:
                    w.write(record)
            listed[split].append(manifest_entry(os.path.join(path, split, name), len(records)))
        shards[split] = names

    rows = sorted(movie_ids, key=lambda m: (-counts[m], m))
    with open(os.path.join(path, schema.VOCAB_FILE), "w", encoding="utf-8") as f:
        f.write("\t".join(schema.VOCAB_COLUMNS) + "\n")
        for m in rows:
            f.write(schema.format_vocab_row(m, counts[m], 1999, f"Movie {m} (1999)", "Drama") + "\n")
    metadata = {
        "schema_version": schema_version,
        "flags": {"max_context_length": context_length, "compression": compression, "split": "last"},
        "input": {"files": [], "sha256": {}},
        "counts": {
            "lines": num_users * timeline_length,
            "malformed": 0,
            "kept_ratings": num_users * timeline_length,
            "users": num_users,
            "train_examples": len(examples[schema.TRAIN]),
            "test_examples": len(examples[schema.TEST]),
        },
        "shards": shards,
    }
    if manifest:
        metadata[schema.MANIFEST] = listed
    write_metadata(path, metadata, success=success, commit=manifest)
    return {
        "train_examples": len(examples[schema.TRAIN]),
        "test_examples": len(examples[schema.TEST]),
        "movie_ids": rows,
    }


def manifest_entry(shard_path: str, examples: int) -> dict:
    """The manifest entry of a shard file as it is now (schema.MANIFEST)."""
    with open(shard_path, "rb") as f:
        raw = f.read()
    return {"name": os.path.basename(shard_path), "bytes": len(raw),
            "sha256": hashlib.sha256(raw).hexdigest(), "examples": examples}


def read_metadata(path: str) -> dict:
    with open(os.path.join(path, schema.METADATA_FILE)) as f:
        return json.load(f)


def write_metadata(path: str, metadata: dict, *, success: bool = True, commit: bool = True
                   ) -> None:
    """Writes metadata.json, then (success) _SUCCESS: committing to metadata.json's
    bytes (schema.success_record) with `commit`, else empty (the old format)."""
    text = json.dumps(metadata, indent=2).encode()
    with open(os.path.join(path, schema.METADATA_FILE), "wb") as f:
        f.write(text)
    if success:
        with open(os.path.join(path, schema.SUCCESS_FILE), "wb") as f:
            f.write(schema.success_record(text) if commit else b"")


def refresh_manifest(path: str, examples: dict | None = None) -> None:
    """Re-records every listed shard's size and SHA-256 as the file is now (after a
    test rewrote it on purpose), with its example count from `examples`
    ({shard name: count}) where given, the split counts to match, and a _SUCCESS
    committing to the new metadata.json: a consistent data_dir again."""
    metadata = read_metadata(path)
    for split, entries in metadata[schema.MANIFEST].items():
        for i, e in enumerate(entries):
            count = (examples or {}).get(e["name"], e["examples"])
            entries[i] = manifest_entry(os.path.join(path, split, e["name"]), count)
        metadata["counts"][f"{split}_examples"] = sum(e["examples"] for e in entries)
    write_metadata(path, metadata)
