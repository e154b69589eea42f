"""Serving speed of the exported SavedModel (trainer/export.py), as a server calls it.

    python -m bench.serve [--calls=300] [--users=6040] [--beam_users=6040,60400] [--repeats=3]

For each catalogue size (MovieLens 1M: 3,883 movies; MovieLens 25M: 62,423) the
default towers (trainer.config defaults: 64-d, 32-unit GRU, the popularity prior;
random weights: speed does not depend on them) are exported with `export_model`
and loaded back with plain `tf.saved_model.load`, then:

- online latency of `serving_default`, batch 1 and batch 64: p50 / p99 over --calls
  calls, after warm-up;
- throughput at batch 1024 (queries/s, median of 20 calls);
- all --users users recommended (k = 100): one call per user (a straightforward
  loop over the SavedModel) against batches of 1024, users/s and the ratio.

With --beam_users (default 6,040 = ML-1M's users, and 60,400), the batch job too, for
each user count N: a synthetic set of N users with ML-1M's shape otherwise
(beam_jobs.synthetic: 3,883 movies, ~166 ratings per user) through the prep job
(beam_jobs.pipeline, which writes users/), the default towers exported with
`export_version`; then, --repeats times each (medians reported, min-max beside them):

- end to end, as a user waits for it: the command `python -m beam_jobs.recommend_all
  --k=100 --exclude_seen` in a fresh process (interpreter, imports, checks, pipeline,
  model load, inference, Parquet), against a fresh-process straightforward loop
  (`--per_user_loop`: import TensorFlow, load the SavedModel, read users/, call
  `serving_default` once per user; nothing written);
- where the command's time goes: the interpreter's start (`python -c pass`); the job's
  imports (Beam), TensorFlow's import and the model load (the handler's load_model), timed
  one after another in a fresh process; in this process, the handler's inference on every
  user (its fixed batches of 1,024) and writing its results as Parquet; the rest of the
  command's time is Beam's (pipeline construction, the runner, moving the batches);
- steady state: the handler's inference alone against the per-user `serving_default`
  loop, both in this process with the model loaded (users/s).

Every case of a catalogue runs in one process, one after another; the machine's load
is printed. Not a test: numbers depend on the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
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


def _beam_inputs(users: int, tmp: str) -> tuple[str, str, str]:
    """(data_dir, model_dir, export_dir) of `users` synthetic users: the prep job's output
    and an export of the default towers (untrained: speed does not depend on weights)."""
    import numpy as np

    from beam_jobs import pipeline, schema, synthetic
    from trainer import export, model
    from trainer.config import ModelConfig

    raw, data_dir = os.path.join(tmp, "raw"), os.path.join(tmp, "data")
    synthetic.generate(synthetic.Config(num_users=users), raw)
    pipeline.run([f"--input_dir={raw}", f"--output_dir={data_dir}"])
    vocab = os.path.join(data_dir, schema.VOCAB_FILE)
    with open(vocab, encoding="utf-8") as f:
        rows = schema.parse_vocab(f.read(), vocab)
    with open(os.path.join(data_dir, schema.METADATA_FILE), encoding="utf-8") as f:
        length = json.load(f)["flags"]["max_context_length"]
    ids = [r["movie_id"] for r in rows]
    counts = np.maximum(np.array([r["count"] for r in rows], np.float64), 1.0)
    towers = model.build_towers(ids, length, ModelConfig(),
                                log_prior=np.log(counts / counts.sum()))
    model_dir = os.path.join(tmp, "model")
    exported = export.export_version(os.path.join(model_dir, "export"), *towers, ids, vocab,
                                     100)
    return data_dir, model_dir, exported


def _wall(argv: list[str]) -> float:
    """Seconds a fresh process running argv takes (from the repository root); its
    failure stops the benchmark."""
    t = time.perf_counter()
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    took = time.perf_counter() - t
    if result.returncode:
        sys.exit(f"{argv[:4]} failed:\n{result.stderr[-3000:]}")
    return took


def _output(argv: list[str]) -> str:
    """The last line a fresh process running argv prints."""
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{argv[:4]} failed:\n{result.stderr[-3000:]}")
    return result.stdout.strip().splitlines()[-1]


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def per_user_loop(data_dir: str, export_dir: str) -> int:
    """The straightforward loop (--per_user_loop): every users/ history through
    `serving_default`, one call per user, k = 100. Returns the users recommended."""
    import tensorflow as tf

    from beam_jobs import recommend_all, schema

    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    records = [r for path, entry in recommend_all.check_data_dir(data_dir).shards
               for r in recommend_all.read_users_records(path, entry)]
    spec = {schema.CONTEXT_MOVIE_ID: tf.io.VarLenFeature(tf.int64)}
    contexts = tf.sparse.to_dense(
        tf.io.parse_example(tf.constant(records), spec)[schema.CONTEXT_MOVIE_ID]).numpy()
    for i in range(len(contexts)):
        serve(context_movie_id=tf.constant(contexts[i:i + 1]))["movie_ids"].numpy()
    return len(contexts)


def bench_beam(users: int, repeats: int) -> dict:
    """The batch job's end-to-end time and its parts for `users` synthetic users, against
    the per-user loop (module doc)."""
    import tensorflow as tf

    from beam_jobs import recommend_all

    python = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, model_dir, exported = _beam_inputs(users, tmp)
        out = os.path.join(tmp, "recs")
        command = [python, "-m", "beam_jobs.recommend_all", f"--data_dir={data_dir}",
                   f"--model_dir={model_dir}", f"--output_dir={out}", "--k=100",
                   "--exclude_seen", "--overwrite"]
        loop = [python, "-m", "bench.serve", f"--per_user_loop={data_dir},{exported}"]
        # The command's start-up steps, timed one after another inside a fresh process.
        steps = ("import time, json; t = [time.perf_counter()]; "
                 "from beam_jobs import recommend_all as r; t.append(time.perf_counter()); "
                 "r.import_tensorflow(0); t.append(time.perf_counter()); "
                 f"r.SavedModelHandler({exported!r}, 100, True).load_model(); "
                 "t.append(time.perf_counter()); "
                 "print(json.dumps([b - a for a, b in zip(t, t[1:])]))")
        runs = {name: [] for name in ("command", "loop_command", "python", "imports",
                                      "tf_import", "model_load")}
        for _ in range(repeats):  # interleaved, so load changes hit every case alike
            runs["command"].append(_wall(command))
            runs["loop_command"].append(_wall(loop))
            runs["python"].append(_wall([python, "-c", "pass"]))
            for name, took in zip(("imports", "tf_import", "model_load"),
                                  json.loads(_output([python, "-c", steps])), strict=True):
                runs[name].append(took)
        # In this process: the handler's inference on every user, the Parquet writing of
        # its results, and the per-user loop, each with the model already loaded.
        records = [r for path, entry in recommend_all.check_data_dir(data_dir).shards
                   for r in recommend_all.read_users_records(path, entry)]
        handler = recommend_all.SavedModelHandler(exported, 100, True)
        loaded = handler.load_model()
        batches = [records[i:i + 1024] for i in range(0, len(records), 1024)]
        infer, write, per_user = [], [], []
        serve = tf.saved_model.load(exported).signatures["serving_default"]
        spec = {"context_movie_id": tf.io.VarLenFeature(tf.int64)}
        contexts = tf.sparse.to_dense(tf.io.parse_example(
            tf.constant(records), spec)["context_movie_id"]).numpy()
        sample = min(len(contexts), 6040)  # the loop's rate, on at most 6,040 users
        for _ in range(repeats):
            t = time.perf_counter()
            results = [((0, b), handler.run_inference([batch], loaded)[0])
                       for b, batch in enumerate(batches)]
            infer.append(time.perf_counter() - t)
            t = time.perf_counter()
            recommend_all.write_parquet_shard((0, results), os.path.join(tmp, "parquet"), 1,
                                              exported)
            write.append(time.perf_counter() - t)
            t = time.perf_counter()
            for i in range(sample):
                serve(context_movie_id=tf.constant(contexts[i:i + 1]))["movie_ids"].numpy()
            per_user.append(sample / (time.perf_counter() - t))
        with open(os.path.join(out, "metadata.json"), encoding="utf-8") as f:
            n = json.load(f)["counts"]["users"]
        assert n == len(records), (n, len(records))  # users/ may hold fewer than asked
        row = {"users": n, **{k: _spread(v) for k, v in runs.items()},
               "inference": _spread(infer), "parquet": _spread(write),
               "loop_users_per_s": statistics.median(per_user)}
        row["inference_users_per_s"] = n / row["inference"]["median"]
        return row


def _beam_table(rows: list[dict]) -> str:
    """The batch job's two tables (markdown): end to end, and where its time goes."""
    def cell(d):
        return f"{d['median']:.1f} ({d['min']:.1f}-{d['max']:.1f})"

    lines = ["| users | `recommend_all` command s | per-user loop command s | end to end "
             "ratio | inference alone users/s | loop users/s | inference ratio |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['users']:,} | {cell(r['command'])} | {cell(r['loop_command'])} | "
            f"{r['loop_command']['median'] / r['command']['median']:.1f}x | "
            f"{r['inference_users_per_s']:,.0f} | {r['loop_users_per_s']:,.0f} | "
            f"{r['inference_users_per_s'] / r['loop_users_per_s']:.1f}x |")
    lines += ["", "| users | python start | Beam, job imports | TensorFlow import | "
              "model load | inference | Parquet writing | rest (Beam: pipeline, runner) "
              "| command |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = {k: r[k]["median"] for k in ("python", "imports", "tf_import", "model_load",
                                         "inference", "parquet", "command")}
        parts = [m["python"], m["imports"], m["tf_import"], m["model_load"], m["inference"],
                 m["parquet"]]
        rest = m["command"] - sum(parts)
        lines.append(f"| {r['users']:,} | " + " | ".join(f"{p:.2f}" for p in parts)
                     + f" | {rest:.2f} | {m['command']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.serve", allow_abbrev=False,
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=300, help="timed calls per latency case")
    p.add_argument("--users", type=int, default=6040, help="users recommended (ML-1M: 6,040)")
    p.add_argument("--catalogues", default=",".join(CATALOGUES),
                   help=f"comma-separated subset of {sorted(CATALOGUES)} ('' for none)")
    p.add_argument("--beam_users", default="6040,60400",
                   help="comma-separated user counts of the batch-job cases ('' for none)")
    p.add_argument("--repeats", type=int, default=3,
                   help="runs of each batch-job case (medians reported)")
    p.add_argument("--per_user_loop", default=None, help=argparse.SUPPRESS)  # DATA,EXPORT
    a = p.parse_args(argv)
    if a.per_user_loop:  # one fresh-process run of the straightforward loop
        print(per_user_loop(*a.per_user_loop.split(",")))
        return
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    rows = [bench(n, CATALOGUES[n], a.calls, a.users) for n in a.catalogues.split(",") if n]
    beam_rows = [bench_beam(int(n), a.repeats) for n in a.beam_users.split(",") if n]
    print(f"load average after: {os.getloadavg()[0]:.2f}\n")
    if rows:
        print("| catalogue | batch 1 p50 / p99 ms | batch 64 p50 / p99 ms | batch 1024 "
              f"queries/s | all {a.users:,} users: loop users/s | batched users/s | "
              "batched / loop |")
        print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['catalogue']} | {r['b1_p50_ms']:.2f} / {r['b1_p99_ms']:.2f} | "
              f"{r['b64_p50_ms']:.2f} / {r['b64_p99_ms']:.2f} | {r['b1024_qps']:,.0f} | "
              f"{r['loop_users_per_s']:,.0f} | {r['batched_users_per_s']:,.0f} | "
              f"{r['batched_users_per_s'] / r['loop_users_per_s']:.1f}x |")
    if beam_rows:
        print(f"\nbeam_jobs.recommend_all (k=100, --exclude_seen, FnApiRunner), medians of "
              f"{a.repeats} (min-max), seconds:\n")
        print(_beam_table(beam_rows))


if __name__ == "__main__":
    main()
