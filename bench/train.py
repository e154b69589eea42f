"""Training speed, ours vs the TFRS tutorial's code, side by side on the same data.

    python -m bench.train [--work_dir=/tmp/seqrec-bench-train] [--steps=10] [--warmup=2]
    python -m bench.train --sections=step --dtype_policy=mixed_bfloat16   # 16-bit (GPU lever)
    python -m bench.train --sections=eval     # one section: input, step, eval

Data: beam_jobs.synthetic defaults (MovieLens-1M shape) -> the Beam job twice
(GZIP shards, and --compression=none); the tutorial reads ONE uncompressed
file, made by concatenating the uncompressed train shards (TFRecord files
concatenate). The tutorial's code is bench/tutorial.py.

1. input: examples/s delivered by trainer.data.make_train_dataset over one
   epoch (GZIP, uncompressed) vs the tutorial's pipeline; the tutorial's first
   pass parses and fills its in-memory cache, later epochs replay the cache
   (shown, but that holds the whole data set in memory, which we may not).
2. step: examples/s of one training step (median over --steps steps after
   --warmup), batch 12800, dim 32: the tutorial's model.fit on its cached
   batches vs trainer.train's step fed by trainer.data (input included), on
   the default strategy and on 2 virtual CPU replicas (own process: virtual
   devices must be set before TF starts).
   Also the loss lever alone: the in-batch softmax + gradients, plain vs
   trainer.losses' blocked version, in one process; and the query-tower
   levers at a model-sized shape (--lever_batch, --lever_dim): the GRU as
   Keras's loop vs unrolled, float32 vs mixed_bfloat16.
3. eval: seconds for the full top-k metrics over the test split: our
   trainer.evaluate vs tfrs.metrics.FactorizedTopK fed movies.batch(128)
   .map(candidate_model) as in the tutorial, same towers and batches, first
   call (includes tracing) and a repeat (as every epoch's evaluation runs).

Every case runs in its own subprocess (fresh TF, its own memory) and prints
one JSON line; the parent prints the tables. Not a test: numbers depend on
the machine's load, which is printed.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import trainer  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TFRS is imported)

BATCH, DIM = 12800, 32
GOALS = {"input": 5.0, "step": 1.5, "eval": 5.0}


def prepare(work_dir: str) -> dict:
    """Input + both Beam outputs + the tutorial's single files (made once)."""
    py = sys.executable
    paths = {k: os.path.join(work_dir, k) for k in ("input", "gzip", "none", "tutorial")}
    if not os.path.exists(os.path.join(paths["input"], "ratings.dat")):
        subprocess.run([py, "-m", "beam_jobs.synthetic", f"--output_dir={paths['input']}"],
                       check=True, cwd=ROOT)
    for comp in ("gzip", "none"):
        if not os.path.exists(os.path.join(paths[comp], "_SUCCESS")):
            subprocess.run([py, "-m", "beam_jobs.pipeline", f"--input_dir={paths['input']}",
                            f"--output_dir={paths[comp]}", f"--compression={comp}",
                            "--overwrite"], check=True, cwd=ROOT)
    os.makedirs(paths["tutorial"], exist_ok=True)
    for split in ("train", "test"):
        target = os.path.join(paths["tutorial"], f"{split}_movielens_1m.tfrecord")
        if not os.path.exists(target):
            with open(target + ".tmp", "wb") as out:
                for shard in sorted(glob.glob(os.path.join(paths["none"], split, "part-*"))):
                    with open(shard, "rb") as f:
                        shutil.copyfileobj(f, out)
            os.replace(target + ".tmp", target)
    return paths


# ---------------------------------------------------------------- child cases

def _info(data_dir):
    from trainer import data

    return data.load_data_dir(data_dir)


def case_input_ours(a) -> dict:
    """One epoch of trainer.data's training stream; examples/s."""
    import tensorflow as tf

    from trainer import data

    info = _info(a.data_dir)
    start = time.perf_counter()
    ds = data.make_train_dataset(info, BATCH, 1, 42, 10_000)
    n = 0
    for batch in ds:
        n += int(tf.shape(batch["label_movie_id"])[0])
    return {"examples": n, "seconds": time.perf_counter() - start}


def _vocab_strings(info):
    import numpy as np

    return np.array([str(m).encode() for m in info.movie_ids])


def _step_stats(times, warmup):
    after = times[warmup:]
    return {"step_s": statistics.median(after), "steps": len(after),
            "min_s": min(after), "max_s": max(after)}


def case_tutorial(a) -> dict:
    """The tutorial: input passes (first = parse + fill cache, second = cached),
    then model.fit steps on the filled cache."""
    import tensorflow as tf

    from bench import tutorial

    info = _info(a.data_dir)  # the Beam output the single file was made from: vocab only
    train_file = os.path.join(a.tutorial_dir, "train_movielens_1m.tfrecord")
    cached = tutorial.cached_train(train_file)
    out = {}
    for name in ("first", "cached"):
        start, n = time.perf_counter(), 0
        for batch in cached:
            n += int(tf.shape(batch["label_movie_id"])[0])
        out[f"input_{name}"] = {"examples": n, "seconds": time.perf_counter() - start}
    model, _, _ = tutorial.build(_vocab_strings(info), DIM)

    times = []

    class Timer(tf.keras.callbacks.Callback):
        # Receiving numpy logs makes Keras wait for each step to finish.
        def on_train_batch_begin(self, batch, logs=None):
            self.t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            times.append(time.perf_counter() - self.t)

    hist = model.fit(cached, epochs=1, steps_per_epoch=a.warmup + a.steps, callbacks=[Timer()],
                     verbose=0)
    out["step"] = _step_stats(times, a.warmup)
    out["loss"] = float(hist.history["loss"][-1])
    return out


def case_step_ours(a) -> dict:
    from trainer import distribute, task
    from trainer.config import TrainConfig

    distribute.configure_virtual_cpus(a.virtual_cpu_devices)
    info = _info(a.data_dir)
    strategy = distribute.make_strategy("auto" if a.virtual_cpu_devices else "default")
    cfg = TrainConfig(data_dir=a.data_dir, model_dir="-", global_batch_size=BATCH,
                      embedding_dim=DIM, epochs=100, dtype_policy=a.dtype_policy)
    retrieval = task.RetrievalTask(info, cfg)
    model, optimizer = retrieval.build_model(strategy)
    it = iter(retrieval.build_inputs(strategy))
    step = retrieval.train_step(model, optimizer, strategy)
    times, losses = [], []
    for _ in range(a.warmup + a.steps):
        t = time.perf_counter()
        losses.append(float(step(next(it))))
        times.append(time.perf_counter() - t)
    return {"step": _step_stats(times, a.warmup), "replicas": strategy.num_replicas_in_sync,
            "loss_first_last": [losses[0], losses[-1]]}


def case_eval(a) -> dict:
    """Ours vs FactorizedTopK as in the tutorial, same towers, same cached batches."""
    import tensorflow as tf
    import tensorflow_recommenders as tfrs

    from trainer import data, evaluate, model
    from trainer.config import ModelConfig

    info = _info(a.data_dir)
    tf.keras.utils.set_random_seed(0)
    query_model, candidate_model = model.build_towers(
        info.movie_ids, info.context_length,
        ModelConfig(embedding_dim=DIM, gru_units=0, last_movies=0))
    test = data.make_eval_dataset(info, 2560).cache()  # the tutorial's test batch
    n = sum(int(tf.shape(b["label_movie_id"])[0]) for b in test)  # fill the cache
    ks = evaluate.DEFAULT_KS
    rows = {}
    for name in ("first", "repeat"):
        start = time.perf_counter()
        got = evaluate.evaluate_retrieval(query_model, candidate_model, test, info.movie_ids, ks)
        rows[f"ours_{name}"] = {"seconds": time.perf_counter() - start,
                                "top": [got[f"top_{k}"] for k in ks]}
    movies = tf.data.Dataset.from_tensor_slices(tf.constant(info.movie_ids, tf.int64))
    metric = tfrs.metrics.FactorizedTopK(candidates=movies.batch(128).map(candidate_model), ks=ks)

    @tf.function
    def update(features):  # what the tutorial's task does per test batch
        metric.update_state(query_model(features["context_movie_id"]),
                            candidate_model(features["label_movie_id"]))

    for name in ("first", "repeat"):
        metric.reset_states()
        start = time.perf_counter()
        for features in test:
            update(features)
        top = [float(v) for v in metric.result()]
        rows[f"factorized_{name}"] = {"seconds": time.perf_counter() - start, "top": top}
    return {"queries": n, "candidates": len(info.movie_ids), **rows,
            "xla": _xla_lever([(n, len(info.movie_ids)), (2048, 62_000)])}


def _xla_lever(shapes) -> list:
    """Scores + label rank (the arithmetic of one evaluation batch) with and
    without XLA, queries x candidates of each shape; median of 5 after 1."""
    import numpy as np
    import tensorflow as tf

    def rank(query, cand, label):
        scores = tf.matmul(query, cand, transpose_b=True)
        label_score = tf.gather(scores, label, batch_dims=1)[:, None]
        return tf.reduce_sum(tf.cast(scores > label_score, tf.int64), axis=1)

    out = []
    for queries, vocab in shapes:
        args = (tf.random.normal([queries, DIM]), tf.random.normal([vocab, DIM]),
                tf.constant(np.random.default_rng(0).integers(0, vocab, queries)))
        row = {"queries": queries, "candidates": vocab}
        for jit in (False, True):
            fn = tf.function(rank, jit_compile=jit)
            fn(*args).numpy()
            times = []
            for _ in range(5):
                t = time.perf_counter()
                fn(*args).numpy()
                times.append(time.perf_counter() - t)
            row["xla" if jit else "plain"] = statistics.median(times)
        out.append(row)
    return out


def _interleaved_medians(fns: dict, runs: int = 9, warmup: int = 2) -> dict:
    """name -> median seconds of fn() (outputs fetched) over runs - warmup calls,
    the functions called in turn so that load hits every variant alike."""
    times = {name: [] for name in fns}
    for i in range(runs):
        for name, fn in fns.items():
            t = time.perf_counter()
            [x.numpy() for x in fn()]
            if i >= warmup:
                times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in times.items()}


def case_loss(a) -> dict:
    """The loss lever alone: in-batch softmax loss + gradients, the plain way
    (whole [b, b] score matrix, sparse_softmax_cross_entropy_with_logits) vs
    trainer.losses' blocked one, same inputs, interleaved in one process
    (so load hits both alike); median of 7 after 2."""
    import numpy as np
    import tensorflow as tf

    from trainer import losses

    out = []
    for b, d in ((BATCH, DIM), (2048, 128)):
        rng = np.random.default_rng(0)
        q = tf.Variable(rng.normal(0, 0.3, (b, d)).astype(np.float32))
        c = tf.Variable(rng.normal(0, 0.3, (b, d)).astype(np.float32))
        fns = {}
        for name, loss in (("plain", losses.reference_in_batch_softmax_loss),
                           ("blocked", losses.in_batch_softmax_loss)):
            @tf.function
            def fn(loss=loss, q=q, c=c):
                with tf.GradientTape() as tape:
                    value = loss(q, c)
                return [value, *tape.gradient(value, [q, c])]
            fns[name] = fn
        out.append({"batch": b, "dim": d, **_interleaved_medians(fns)})
    return {"loss": out}


def case_tower_levers(a) -> dict:
    """Query-tower levers at a model-sized shape: forward + backward of the
    towers and the loss, the GRU as Keras's loop (cuDNN-swappable) vs unrolled
    (the CPU default), float32 vs mixed_bfloat16; interleaved in one process,
    median of 7 after 2."""
    import numpy as np
    import tensorflow as tf

    from trainer import losses, model
    from trainer.config import ModelConfig

    b, d, length = a.lever_batch, a.lever_dim, 10
    info = _info(a.data_dir)
    rng = np.random.default_rng(0)
    context = np.zeros((b, length), np.int64)
    for i, k in enumerate(rng.integers(1, length + 1, b)):
        context[i, :k] = rng.choice(info.movie_ids, k)
    context = tf.constant(context)
    label = tf.constant(rng.choice(info.movie_ids, b), tf.int64)
    variants = {"loop, float32": (False, "float32"), "unrolled, float32": (True, "float32"),
                "unrolled, mixed_bfloat16": (True, "mixed_bfloat16")}
    fns = {}
    for name, (unroll, policy) in variants.items():
        q, c = model.build_towers(
            info.movie_ids, length,
            ModelConfig(embedding_dim=d, gru_units=0, last_movies=0, dtype_policy=policy),
            unroll_gru=unroll)

        @tf.function
        def fn(q=q, c=c):
            with tf.GradientTape() as tape:
                value = losses.in_batch_softmax_loss(q(context, training=True),
                                                     c(label, training=True))
            grads = tape.gradient(value, q.trainable_variables + c.trainable_variables)
            return [value, *(tf.convert_to_tensor(g) for g in grads)]
        fns[name] = fn
    medians = _interleaved_medians(fns)
    return {"batch": b, "dim": d, "ms": {k: 1000 * v for k, v in medians.items()}}


CASES = {"input_ours": case_input_ours, "tutorial": case_tutorial, "step_ours": case_step_ours,
         "eval": case_eval, "loss": case_loss,
         "tower_levers": case_tower_levers}


# -------------------------------------------------------------------- parent

def run_case(name: str, argv: list[str]) -> dict:
    cmd = [sys.executable, "-m", "bench.train", f"--case={name}", *argv]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT "):])
    out["process_s"] = time.perf_counter() - start
    print(f"  {name} {' '.join(argv)}: {out}", file=sys.stderr, flush=True)
    return out


def _goal(name: str, ratio: float) -> str:
    return f"{ratio:.1f}x ({'met' if ratio >= GOALS[name] else 'MISSED'}: goal >= {GOALS[name]}x)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--work_dir", default="/tmp/seqrec-bench-train")
    p.add_argument("--sections", default="input,step,eval")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--case", choices=sorted(CASES), help=argparse.SUPPRESS)
    p.add_argument("--data_dir", help=argparse.SUPPRESS)
    p.add_argument("--tutorial_dir", help=argparse.SUPPRESS)
    p.add_argument("--virtual_cpu_devices", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--dtype_policy", default="float32",
                   help="our step cases' --dtype_policy (mixed_bfloat16/mixed_float16: the GPU lever)")
    p.add_argument("--lever_batch", type=int, default=2048,
                   help="batch of the query-tower lever comparison (step section)")
    p.add_argument("--lever_dim", type=int, default=128,
                   help="embedding/GRU width of the query-tower lever comparison")
    a = p.parse_args(argv)
    if a.case:
        out = CASES[a.case](a)
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(out), flush=True)
        return 0

    sections = a.sections.split(",")
    paths = prepare(a.work_dir)
    common = [f"--steps={a.steps}", f"--warmup={a.warmup}"]
    ours = [*common, f"--dtype_policy={a.dtype_policy}"]
    gz, raw = f"--data_dir={paths['gzip']}", f"--data_dir={paths['none']}"
    load = [os.getloadavg()[0]]
    r = {}
    if "input" in sections or "step" in sections:
        r["tutorial"] = run_case("tutorial", [raw, f"--tutorial_dir={paths['tutorial']}", *common])
    if "input" in sections:
        r["in_gz"] = run_case("input_ours", [gz])
        r["in_raw"] = run_case("input_ours", [raw])
    if "step" in sections:
        r["step_1"] = run_case("step_ours", [gz, *ours])
        r["step_2"] = run_case("step_ours", [gz, "--virtual_cpu_devices=2", *ours])
        r["loss"] = run_case("loss", [])
        r["levers"] = run_case("tower_levers", [gz, f"--lever_batch={a.lever_batch}",
                                                f"--lever_dim={a.lever_dim}"])
    if "eval" in sections:
        r["eval"] = run_case("eval", [gz])
    load.append(os.getloadavg()[0])

    print(f"\nMovieLens-1M-shaped synthetic data, batch {BATCH}, dim {DIM}, {os.cpu_count()} CPUs, "
          f"no GPU; load average {load[0]:.1f} before, {load[1]:.1f} after")
    if "input" in sections:
        t = r["tutorial"]
        base = t["input_first"]["examples"] / t["input_first"]["seconds"]
        print("\n| input pipeline (1 epoch) | examples | s | examples/s | vs tutorial |")
        print("|---|---:|---:|---:|---|")
        for name, x, goal in [
            ("tutorial: 1 file, parse_single_example, as_string, shuffle, batch, cache "
             "(1st epoch)", t["input_first"], False),
            ("tutorial: epochs 2+ replay the in-memory cache", t["input_cached"], False),
            ("ours: trainer.data, 8 GZIP shards", r["in_gz"], True),
            ("ours: trainer.data, 8 uncompressed shards", r["in_raw"], True),
        ]:
            rate = x["examples"] / x["seconds"]
            vs = _goal("input", rate / base) if goal else f"{rate / base:.1f}x"
            print(f"| {name} | {x['examples']:,} | {x['seconds']:.1f} | {rate:,.0f} | {vs} |")
    if "step" in sections:
        base = BATCH / r["tutorial"]["step"]["step_s"]
        print(f"\n| training step, batch 12800, dim 32 (ours: {a.dtype_policy}) | replicas "
              "| median s/step (min..max) "
              "| examples/s | vs tutorial | process peak RSS MB |")
        print("|---|---:|---:|---:|---|---:|")
        for name, x, reps, goal in [
            ("tutorial: model.fit on its cached batches", r["tutorial"], 1, False),
            ("ours: trainer.train step + trainer.data (GZIP), default strategy", r["step_1"], 1,
             True),
            ("ours: same, MirroredStrategy on all local devices (GPUs, else 2 virtual CPUs)",
             r["step_2"], r["step_2"]["replicas"], True),
        ]:
            s = x["step"]
            rate = BATCH / s["step_s"]
            vs = _goal("step", rate / base) if goal else "1.0x"
            print(f"| {name} | {reps} | {s['step_s']:.2f} ({s['min_s']:.2f}..{s['max_s']:.2f}) "
                  f"| {rate:,.0f} | {vs} | {x.get('peak_rss_mb', 0):,.0f} |")
        print("\nlever: the in-batch softmax loss + its gradients alone, plain [b, b] scores + "
              "sparse_softmax_cross_entropy_with_logits vs trainer.losses (blocked):")
        for x in r["loss"]["loss"]:
            print(f"  batch {x['batch']:,}, dim {x['dim']}: {x['plain'] * 1000:.0f} ms vs "
                  f"{x['blocked'] * 1000:.0f} ms ({x['plain'] / x['blocked']:.2f}x)")
        lv = r["levers"]
        base_ms = lv["ms"]["loop, float32"]
        print(f"\nlevers: towers + loss forward and backward, batch {lv['batch']:,}, "
              f"dim {lv['dim']} (the GRU dominates at this width):")
        for name, ms in lv["ms"].items():
            print(f"  GRU {name}: {ms:.0f} ms ({base_ms / ms:.2f}x)")
    if "eval" in sections:
        e = r["eval"]
        print(f"\n| evaluation: {e['queries']:,} test queries x {e['candidates']:,} candidates, "
              "top-k k=1,5,10,50,100 | s | vs FactorizedTopK | top_1 top_5 top_10 top_50 top_100 |")
        print("|---|---:|---|---|")
        for name, key, base_key in [
            ("FactorizedTopK as in the tutorial, 1st pass (traces)", "factorized_first", None),
            ("FactorizedTopK, repeat pass", "factorized_repeat", None),
            ("ours: trainer.evaluate, 1st call (traces)", "ours_first", "factorized_first"),
            ("ours: repeat call (every later epoch)", "ours_repeat", "factorized_repeat"),
        ]:
            x = e[key]
            vs = _goal("eval", e[base_key]["seconds"] / x["seconds"]) if base_key else ""
            tops = " ".join(f"{v:.4f}" for v in x["top"])
            print(f"| {name} | {x['seconds']:.2f} | {vs} | {tops} |")
        print("\nlevers: tracing = 1st call - repeat = "
              f"{e['ours_first']['seconds'] - e['ours_repeat']['seconds']:.2f} s; scoring + rank "
              "arithmetic, plain vs jit_compile (XLA):")
        for x in e["xla"]:
            print(f"  {x['queries']:,} queries x {x['candidates']:,} candidates: "
                  f"{x['plain']:.3f} s vs {x['xla']:.3f} s XLA ({x['plain'] / x['xla']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
