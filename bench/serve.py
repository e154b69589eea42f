"""Serving speed of the exported SavedModel (trainer/export.py), as a server calls it.

    python -m bench.serve [--calls=300] [--users=6040]

For each catalogue size (MovieLens 1M: 3,883 movies; MovieLens 25M: 62,423) the
default towers (trainer.config defaults: 96-d, 32-unit GRU, the popularity prior;
random weights: speed does not depend on them) are exported with `export_model`
and loaded back with plain `tf.saved_model.load`, then:

- online latency of `serving_default`, batch 1 and batch 64: p50 / p99 over --calls
  calls, after warm-up;
- throughput at batch 1024 (queries/s, median of 20 calls);
- all --users users recommended (k = 100): one call per user (a straightforward
  loop over the SavedModel) against batches of 1024, users/s and the ratio.

With --beam_users (default 6,040: ML-1M's users), the batch job too: a synthetic
ML-1M-sized set (beam_jobs.synthetic) through the prep job (beam_jobs.pipeline, which
writes users/), the default towers exported with `export_version`, then
`beam_jobs.recommend_all` (RunInference, DirectRunner, k = 100, seen movies excluded)
timed end to end as a user runs it (pipeline construction, model load, reading users/,
writing Parquet), against a loop calling `serving_default` once per user on the same
users/ histories.

Every case of a catalogue runs in one process, one after another; the machine's load
is printed. Not a test: numbers depend on the machine.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import trainer  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TF is imported)

CATALOGUES = {"ML-1M": 3883, "ML-25M": 62423}
L = 10


def _export(num_movies: int, out: str) -> str:
    import numpy as np

    from beam_jobs import schema
    from trainer import export, model
    from trainer.config import ModelConfig

    ids = list(range(1, num_movies + 1))
    vocab = os.path.join(out, "vocab.tsv")
    with open(vocab, "w") as f:
        f.write("\t".join(schema.VOCAB_COLUMNS) + "\n")
        f.writelines(schema.format_vocab_row(m, 1, 2000, f"Movie {m} (2000)", "Drama") + "\n"
                     for m in ids)
    prior = np.log(np.random.default_rng(0).uniform(1, 100, num_movies) / (50.0 * num_movies))
    towers = model.build_towers(ids, L, ModelConfig(), log_prior=prior)
    return export.export_model(*towers, ids, os.path.join(out, "export"), vocab, 100)


def _histories(rng, n: int, num_movies: int):
    import numpy as np

    lengths = rng.integers(1, L + 1, n)
    out = np.zeros((n, L), np.int64)
    for i, k in enumerate(lengths):
        out[i, :k] = rng.integers(1, num_movies + 1, k)
    return out


def _timed(fn, arg, calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn(context_movie_id=arg)["movie_ids"].numpy()
        times.append(time.perf_counter() - t)
    return times


def bench(name: str, num_movies: int, calls: int, users: int) -> dict:
    import numpy as np
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        serve = tf.saved_model.load(_export(num_movies, tmp)).signatures["serving_default"]
        rng = np.random.default_rng(1)
        row = {"catalogue": f"{name} ({num_movies:,} movies)"}
        for batch in (1, 64):
            arg = tf.constant(_histories(rng, batch, num_movies))
            _timed(serve, arg, 20)  # warm-up (first calls trace and allocate)
            times = sorted(_timed(serve, arg, calls))
            row[f"b{batch}_p50_ms"] = 1000 * times[len(times) // 2]
            row[f"b{batch}_p99_ms"] = 1000 * times[min(len(times) - 1, int(0.99 * len(times)))]
        arg = tf.constant(_histories(rng, 1024, num_movies))
        _timed(serve, arg, 3)
        row["b1024_qps"] = 1024 / statistics.median(_timed(serve, arg, 20))
        everyone = _histories(rng, users, num_movies)
        t = time.perf_counter()
        for i in range(users):
            serve(context_movie_id=tf.constant(everyone[i:i + 1]))["movie_ids"].numpy()
        row["loop_users_per_s"] = users / (time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(0, users, 1024):
            serve(context_movie_id=tf.constant(everyone[i:i + 1024]))["movie_ids"].numpy()
        row["batched_users_per_s"] = users / (time.perf_counter() - t)
        return row


def bench_beam(users: int) -> dict:
    """The batch job's users/s on a synthetic ML-1M-sized set, and a per-user loop's."""
    import numpy as np
    import tensorflow as tf

    from beam_jobs import pipeline, recommend_all, schema, synthetic
    from trainer import data, export, model
    from trainer.config import ModelConfig

    with tempfile.TemporaryDirectory() as tmp:
        raw, data_dir = os.path.join(tmp, "raw"), os.path.join(tmp, "data")
        synthetic.generate(synthetic.Config(num_users=users), raw)
        pipeline.run([f"--input_dir={raw}", f"--output_dir={data_dir}"])
        info = data.load_data_dir(data_dir)
        counts = np.maximum(np.asarray(info.counts, np.float64), 1.0)
        towers = model.build_towers(list(info.movie_ids), info.context_length, ModelConfig(),
                                    log_prior=np.log(counts / counts.sum()))
        model_dir = os.path.join(tmp, "model")
        exported = export.export_version(os.path.join(model_dir, "export"), *towers,
                                         info.movie_ids,
                                         os.path.join(data_dir, schema.VOCAB_FILE), 100)
        out = os.path.join(tmp, "recs")
        t = time.perf_counter()
        meta = recommend_all.run([f"--data_dir={data_dir}", f"--model_dir={model_dir}",
                                  f"--output_dir={out}", "--k=100", "--exclude_seen"])
        beam_s = time.perf_counter() - t
        records = [r for path, entry in recommend_all.check_data_dir(data_dir).shards
                   for r in recommend_all.read_users_records(path, entry)]
        # The job's parts: the handler's model load, and its batches as RunInference calls
        # them (the rest is Beam's start-up, reading and Parquet writing).
        handler = recommend_all.SavedModelHandler(exported, 100, True)
        t = time.perf_counter()
        loaded = handler.load_model()
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        for i in range(0, len(records), 1024):
            handler.run_inference([records[i:i + 1024]], loaded)
        infer_s = time.perf_counter() - t
        spec = {schema.CONTEXT_MOVIE_ID: tf.io.FixedLenFeature([info.context_length],
                                                               tf.int64)}
        contexts = tf.io.parse_example(tf.constant(records), spec)[schema.CONTEXT_MOVIE_ID]
        contexts = contexts.numpy()
        serve = tf.saved_model.load(exported).signatures["serving_default"]
        serve(context_movie_id=tf.constant(contexts[:1]))  # warm-up
        t = time.perf_counter()
        for i in range(len(contexts)):
            serve(context_movie_id=tf.constant(contexts[i:i + 1]))["movie_ids"].numpy()
        loop_s = time.perf_counter() - t
        n = meta["counts"]["users"]
        return {"users": n, "beam_s": beam_s, "beam_users_per_s": n / beam_s,
                "load_s": load_s, "infer_users_per_s": len(records) / infer_s,
                "loop_users_per_s": len(contexts) / loop_s}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.serve", allow_abbrev=False,
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=300, help="timed calls per latency case")
    p.add_argument("--users", type=int, default=6040, help="users recommended (ML-1M: 6,040)")
    p.add_argument("--catalogues", default=",".join(CATALOGUES),
                   help=f"comma-separated subset of {sorted(CATALOGUES)}")
    p.add_argument("--beam_users", type=int, default=6040,
                   help="users of the batch-job case (0: skip it)")
    a = p.parse_args(argv)
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    rows = [bench(n, CATALOGUES[n], a.calls, a.users) for n in a.catalogues.split(",") if n]
    beam_row = bench_beam(a.beam_users) if a.beam_users else None
    print(f"load average after: {os.getloadavg()[0]:.2f}\n")
    print("| catalogue | batch 1 p50 / p99 ms | batch 64 p50 / p99 ms | batch 1024 queries/s |"
          f" all {a.users:,} users: loop users/s | batched users/s | batched / loop |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['catalogue']} | {r['b1_p50_ms']:.2f} / {r['b1_p99_ms']:.2f} | "
              f"{r['b64_p50_ms']:.2f} / {r['b64_p99_ms']:.2f} | {r['b1024_qps']:,.0f} | "
              f"{r['loop_users_per_s']:,.0f} | {r['batched_users_per_s']:,.0f} | "
              f"{r['batched_users_per_s'] / r['loop_users_per_s']:.1f}x |")
    if beam_row:
        b = beam_row
        print(f"\nbeam_jobs.recommend_all (DirectRunner, k=100, --exclude_seen): "
              f"{b['users']:,} users in {b['beam_s']:.1f} s = {b['beam_users_per_s']:,.0f} "
              f"users/s; per-user serving_default loop {b['loop_users_per_s']:,.0f} users/s; "
              f"{b['beam_users_per_s'] / b['loop_users_per_s']:.1f}x (model load "
              f"{b['load_s']:.1f} s; inference alone {b['infer_users_per_s']:,.0f} users/s = "
              f"{b['infer_users_per_s'] / b['loop_users_per_s']:.1f}x the loop)")


if __name__ == "__main__":
    main()
