"""Full-vocabulary evaluation: trainer.evaluate vs the tutorial's FactorizedTopK.

    python -m bench.evaluate_bench [--queries=6000] [--vocab=3700] [--dim=32] [--batch=1024]

Random (untrained) GRU towers from trainer.model on random contexts: speed
does not depend on the weights. Prints a table of seconds per evaluation and
the top-k numbers of both (they must agree: same tie rule).
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_recommenders as tfrs  # noqa: E402

from beam_jobs import schema  # noqa: E402
from trainer import evaluate, model  # noqa: E402

KS = (1, 5, 10, 50, 100)


def _dataset(num_queries: int, vocab: np.ndarray, length: int, batch: int) -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    context = rng.choice(vocab, (num_queries, length))
    lengths = rng.integers(1, length + 1, num_queries)
    context[np.arange(length)[None, :] >= lengths[:, None]] = schema.PAD_MOVIE_ID
    return tf.data.Dataset.from_tensor_slices(
        {schema.CONTEXT_MOVIE_ID: context, schema.LABEL_MOVIE_ID: rng.choice(vocab, num_queries)}
    ).batch(batch).cache()


def _factorized(query_model, candidate_model, dataset, vocab) -> list[tuple[str, float, dict]]:
    """The tutorial: FactorizedTopK over movies.batch(128).map(candidate_model).

    Two passes over the data, the second with the update step already traced
    (as Keras evaluate() would run it every epoch).
    """
    metric = tfrs.metrics.FactorizedTopK(
        candidates=tf.data.Dataset.from_tensor_slices(vocab).batch(128).map(candidate_model), ks=KS
    )

    @tf.function
    def update(features):
        metric.update_state(
            query_model(features[schema.CONTEXT_MOVIE_ID]),
            candidate_model(features[schema.LABEL_MOVIE_ID]),
        )

    rows = []
    for name in ("FactorizedTopK streaming (1st pass)", "FactorizedTopK streaming (2nd pass)"):
        metric.reset_states()
        start = time.perf_counter()
        for features in dataset:
            update(features)
        result = {f"top_{k}": float(v) for k, v in zip(KS, metric.result(), strict=True)}
        rows.append((name, time.perf_counter() - start, result))
    return rows


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=6000)
    parser.add_argument("--vocab", type=int, default=3700)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--length", type=int, default=schema.DEFAULT_MAX_CONTEXT_LENGTH)
    args = parser.parse_args()

    vocab = np.arange(1, args.vocab + 1, dtype=np.int64)
    query_model, candidate_model = model.build_towers(vocab, args.dim, args.length)
    data = _dataset(args.queries, vocab, args.length, args.batch)
    list(data)  # fill the cache: time evaluation, not input generation

    rows = []
    for name, fn in [
        ("evaluate_retrieval (1st call)", lambda: evaluate.evaluate_retrieval(
            query_model, candidate_model, data, vocab)),
        ("evaluate_retrieval (2nd call)", lambda: evaluate.evaluate_retrieval(
            query_model, candidate_model, data, vocab)),
        ("evaluate_retrieval exclude_context", lambda: evaluate.evaluate_retrieval(
            query_model, candidate_model, data, vocab, exclude_context=True)),
        ("popularity_baseline", lambda: evaluate.popularity_baseline(
            data, vocab, np.arange(args.vocab)[::-1])),
    ]:
        seconds, metrics = _timed(fn)
        rows.append((name, seconds, metrics))
    rows += _factorized(query_model, candidate_model, data, vocab)

    print(f"{args.queries} queries x {args.vocab} candidates, dim {args.dim}, "
          f"batch {args.batch}, {os.cpu_count()} CPUs, devices "
          f"{[d.device_type for d in tf.config.list_logical_devices()]}")
    print(f"{'method':<38} {'seconds':>8} " + " ".join(f"{'top_' + str(k):>7}" for k in KS))
    for name, seconds, metrics in rows:
        tops = " ".join(f"{metrics[f'top_{k}']:7.4f}" for k in KS)
        print(f"{name:<38} {seconds:8.2f} {tops}")


if __name__ == "__main__":
    main()
