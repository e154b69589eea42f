"""Order-free fingerprints of a data_dir's examples, to check implementations agree.

    python -m bench.compare DATA_DIR [DATA_DIR ...]

Each example is parsed (tf.io.parse_example, the trainer's view of the data) into one
canonical byte row; rows are sorted and hashed per split. Two data_dirs with equal
fingerprints hold the same multiset of examples, whatever their sharding, record order or
protobuf field order.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import sys

from beam_jobs import schema


def canonical_rows(data_dir: str, split: str,
                   max_context_length: int = schema.DEFAULT_MAX_CONTEXT_LENGTH,
                   max_context_movie_genre_length: int = schema.DEFAULT_MAX_CONTEXT_MOVIE_GENRE_LENGTH,
                   ) -> list[bytes]:
    """Sorted canonical rows of the examples of one split (feature lengths as written)."""
    import numpy as np
    import tensorflow as tf

    files = sorted(glob.glob(os.path.join(data_dir, split, schema.SHARD_GLOB)))
    spec = {}
    for f in schema.features(max_context_length, max_context_movie_genre_length):
        dtype = {"int64": tf.int64, "float": tf.float32, "bytes": tf.string}[f.dtype]
        spec[f.name] = tf.io.FixedLenFeature([f.length], dtype)
    rows: list[bytes] = []
    for name in files:
        compression = "GZIP" if name.endswith(".gz") else ""
        ds = tf.data.TFRecordDataset([name], compression_type=compression).batch(8192)
        for batch in ds.map(lambda x: tf.io.parse_example(x, spec)):
            fixed = np.concatenate(
                [batch[schema.CONTEXT_MOVIE_ID].numpy(),
                 batch[schema.CONTEXT_MOVIE_RATING].numpy().view(np.int32).astype(np.int64),
                 batch[schema.CONTEXT_MOVIE_YEAR].numpy(),
                 batch[schema.LABEL_MOVIE_ID].numpy()], axis=1).astype("<i8")
            genres = tf.strings.reduce_join(batch[schema.CONTEXT_MOVIE_GENRE], axis=1,
                                            separator="|").numpy()
            rows.extend(f.tobytes() + b"\x00" + g for f, g in zip(fixed, genres, strict=True))
    rows.sort()
    return rows


def fingerprint(data_dir: str) -> dict:
    """{split: {"examples": N, "sha256": hex}} plus the sha256 of vocab.tsv."""
    out = {}
    for split in schema.SPLITS:
        rows = canonical_rows(data_dir, split)
        h = hashlib.sha256()
        for r in rows:
            h.update(len(r).to_bytes(4, "little") + r)
        out[split] = {"examples": len(rows), "sha256": h.hexdigest()}
    with open(os.path.join(data_dir, schema.VOCAB_FILE), "rb") as f:
        out["vocab_sha256"] = hashlib.sha256(f.read()).hexdigest()
    return out


if __name__ == "__main__":
    for d in sys.argv[1:]:
        print(json.dumps({"data_dir": d, **fingerprint(d)}))
