r"""Retrieval quality side by side: popularity, the TFRS tutorial's own code, its
setup on our trainer, our defaults; real data first.

    python -m bench.quality --ml100k --ml1m_synthetic     # both tables, real first
    python -m bench.quality --ml100k --only "tutorial's code" --tutorial_epochs=1  # a smoke run
    python -m bench.quality --last_dir=DIR [--reference_dir=DIR --random_dir=DIR]  # any data
    python -m bench.quality --ml100k --exclude_seen       # rank without seen movies

Data sets (prepared once, cached in --work_dir under a hash of the beam_jobs
source that made them, so a changed job rebuilds them):
  --ml100k          real MovieLens 100K (bench/movielens100k.py: recbole 1.2.1's copy,
                    fetched into a cache, never committed) through beam_jobs.pipeline;
  --ml1m_synthetic  beam_jobs.synthetic's defaults (the ML-1M shape: 6,040 users,
                    1,000,209 ratings) through beam_jobs.pipeline;
  --last_dir        a data_dir made with --split=last (and --reference_dir, the same
                    ratings with --nolow_ratings_in_context; --random_dir, one made with
                    --split=random, for the random-split row).
Each prepared set is made twice: with the job's defaults (our rows) and with the TFRS
reference generator's timelines, ratings below --min_rating dropped (the tutorial's
rows: its code and its preset, data preparation included; data column "reference").
Both have the same validation and test labels.

Rows, each in a fresh process from a frozen copy of the source (see snapshot):
  * "tutorial's code, N epochs" for each N of --tutorial_epochs: bench/tutorial.py,
    the tutorial's pipeline and model, trained by its own model.fit on the train
    split as one uncompressed TFRecord file (made from the shards once, outside
    every timing) and scored by the trainer's evaluator (bench/tutorial_run.py);
  * "markov chain, last 3 movies": trainer/markov.py's counting baseline
    (bench/markov_run.py): the next movie by how often it followed each of the
    last 3 movies in the train split; no training;
  * "tutorial preset": its setup on our trainer (`--preset=tutorial`);
  * "defaults": `python -m trainer.train` with no flags; "towers alone": the same
    without the counted successors blended in (`--markov_weight=0`);
  * `--row NAME=FLAGS` adds or replaces trainer rows; `--only NAME` (a row's name,
    or the part before its comma) runs just those.
Every trainer row is `python -m trainer.train` (one device, no evaluation between
epochs, no export); all rows are scored the same way (trainer/evaluate.py: full
ranking over the whole vocabulary) on the validation split (each user's
second-to-last example, when the data_dir has one) and the test split (the
last); each metric cell reads "validation / test". `--exclude_seen` ranks
without each user's already-rated movies in every row (the trainer's
--eval_exclude_seen), popularity included. "chosen on" says which split the
row's configuration was chosen on ("tutorial": taken as published, not tuned
here). `--seeds=42,1,2` runs every trainer row and tutorial's-code row once per
seed (`--seed=S`) and reports the mean of each metric and time ("seeds" column;
the JSON keeps each seed's metrics): on ML-100K's 943 queries one run's test
top-10 moves by up to 0.01 between seeds. "train s": trainer rows, the training
steps only (from the trainer's per-epoch examples/s log lines); tutorial's code,
its model.fit; the Markov chain, its counting pass. "wall s": the whole process
(start-up, data checks, input warm-up, evaluation).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from beam_jobs import schema  # noqa: E402  (stdlib only: no TensorFlow in this process)
from bench.quality_prep import (  # noqa: E402
    prepare_ml100k,
    prepare_synthetic,
    snapshot,
    tutorial_input,
)

KEYS = ("top_1", "top_5", "top_10", "top_50", "top_100", "ndcg_10", "mrr")
EVAL_SPLITS = ("validation", "test")  # the cell order: "validation / test"
EPOCH_LINE = re.compile(r"Epoch \d+ done: step (\d+), mean loss [\d.naif]+, (\d+) examples/s")
TUTORIAL_ROW = "tutorial's code"
# Where the defaults (trainer/config.py) were chosen: ML-100K's validation split, checked
# on synthetic ML-1M's (bench/README_quality.md, "Towers for the blend").
DEFAULTS_CHOSEN_ON = "validation"


@dataclasses.dataclass(frozen=True)
class Row:
    """One configuration: which data_dir ("last", "reference": the same ratings with
    the reference generator's timelines, or "random"), trainer flags, the split it
    was chosen on, tutorial_epochs > 0 for the tutorial's own code, markov for the
    counting baseline (bench/markov_run.py)."""

    data: str = "last"
    flags: tuple[str, ...] = ()
    chosen_on: str = "-"
    tutorial_epochs: int = 0
    markov: bool = False


MARKOV_ROW = "markov chain, last 3 movies"
ROWS = {
    # trainer/markov.py's defaults were chosen on ML-100K's validation split.
    MARKOV_ROW: Row(chosen_on="validation", markov=True),
    # The tutorial's setup, its data preparation included.
    "tutorial preset": Row("reference", ("--preset=tutorial",), "tutorial"),
    "defaults": Row(chosen_on=DEFAULTS_CHOSEN_ON),
    # The defaults' towers without the counted successors blended in: what training adds.
    "towers alone": Row(flags=("--markov_weight=0",), chosen_on=DEFAULTS_CHOSEN_ON),
    "tutorial preset, random split": Row("random", ("--preset=tutorial",), "tutorial"),
}


def _child(src: str, module: str, args: list[str], log: str) -> tuple[float, str]:
    """Runs `python -m module args` from the snapshot; (wall s, stderr), stderr also
    saved to `log`. A failure ends the benchmark with the command and its stderr's end."""
    cmd = [sys.executable, "-m", module, *args]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=src)
    start = time.time()
    proc = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True)
    wall = time.time() - start
    with open(log, "w") as f:
        f.write(proc.stderr)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n"
                         f"{(proc.stdout + proc.stderr)[-3000:]}")
    return wall, proc.stderr


def trainer_args(data_dir: str, model_dir: str, flags, exclude_seen: bool,
                 seed: int | None = None) -> list[str]:
    """The `python -m trainer.train` arguments of a trainer row (seed None: the
    trainer's default; a row's own --seed flag comes after and wins)."""
    return [f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--noeval_every_epoch",
            "--noexport", "--checkpoint_every_steps=0",
            *([f"--seed={seed}"] if seed is not None else []), *flags,
            *(["--eval_exclude_seen"] if exclude_seen else [])]


def run_row(data_dir: str, flags, work: str, exclude_seen: bool = False,
            seed: int | None = None) -> dict:
    """Trains one trainer configuration; returns its metrics.json plus timings."""
    model_dir = tempfile.mkdtemp(prefix="model-", dir=work)
    wall, stderr = _child(snapshot(work), "trainer.train",
                          trainer_args(data_dir, model_dir, flags, exclude_seen, seed),
                          os.path.join(model_dir, "train.log"))
    with open(os.path.join(model_dir, "metrics.json")) as f:
        metrics = json.load(f)
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    # Each epoch line gives its steps' throughput; train time = examples / rate.
    # The best epoch's rate is the figure least disturbed by other load on a
    # shared machine.
    train_s, last_step, best = 0.0, 0, 0
    for step, rate in EPOCH_LINE.findall(stderr):
        train_s += (int(step) - last_step) * config["trainer"]["global_batch_size"] / int(rate)
        last_step, best = int(step), max(best, int(rate))
    return {"metrics": metrics, "train_s": train_s, "wall_s": wall, "best_rate": best,
            "config": config}


def tutorial_args(data_dir: str, train_file: str, epochs: int, output: str,
                  exclude_seen: bool, seed: int | None = None) -> list[str]:
    """The `python -m bench.tutorial_run` arguments of a tutorial's-code row."""
    return [f"--data_dir={data_dir}", f"--train_file={train_file}", f"--epochs={epochs}",
            f"--output={output}", *(["--exclude_seen"] if exclude_seen else []),
            *([f"--seed={seed}"] if seed is not None else [])]


def run_tutorial(data_dir: str, epochs: int, work: str, exclude_seen: bool = False,
                 seed: int | None = None) -> dict:
    """Trains the tutorial's own code for `epochs` (bench/tutorial_run.py); the same
    dict as run_row. best_rate: train examples / the fastest epoch's seconds."""
    train_file = tutorial_input(data_dir, work)  # before the clock: not the tutorial's work
    out = tempfile.mkdtemp(prefix="tutorial-", dir=work)
    output = os.path.join(out, "metrics.json")
    wall, _ = _child(snapshot(work), "bench.tutorial_run",
                     tutorial_args(data_dir, train_file, epochs, output, exclude_seen, seed),
                     os.path.join(out, "train.log"))
    with open(output) as f:
        metrics = json.load(f)
    timing = metrics.pop("timing")
    return {"metrics": metrics, "train_s": timing["train_s"], "wall_s": wall,
            "best_rate": round(timing["examples_per_epoch"] / min(timing["epoch_s"]))}


def run_markov(data_dir: str, work: str, exclude_seen: bool = False) -> dict:
    """Counts and scores the Markov baseline (bench/markov_run.py); the same dict as
    run_row. train_s: the counting pass over the train split."""
    out = tempfile.mkdtemp(prefix="markov-", dir=work)
    output = os.path.join(out, "metrics.json")
    wall, _ = _child(snapshot(work), "bench.markov_run",
                     [f"--data_dir={data_dir}", f"--output={output}",
                      *(["--exclude_seen"] if exclude_seen else [])],
                     os.path.join(out, "run.log"))
    with open(output) as f:
        metrics = json.load(f)
    return {"metrics": metrics, "train_s": metrics.pop("timing")["fit_s"], "wall_s": wall,
            "best_rate": None}


def select_rows(tutorial_epochs, extra: list[str], only: list[str], random: bool) -> dict:
    """name -> Row: the tutorial's code per epoch count, ROWS, then --row additions;
    only: names (or the part before a name's comma) to keep; random: whether a
    random-split data_dir was given."""
    rows = {f"{TUTORIAL_ROW}, {n} epoch{'s' * (n != 1)}": Row(
        "reference", chosen_on="tutorial", tutorial_epochs=n)
            for n in tutorial_epochs}
    rows.update(ROWS)
    for spec in extra:
        name, _, flags = spec.partition("=")
        rows[name] = Row(flags=tuple(flags.split()))
    if only:
        rows = {k: v for k, v in rows.items() if k in only or k.split(",")[0] in only}
    return {k: v for k, v in rows.items() if random or v.data != "random"}


def _cell(metrics: dict, key: str) -> str:
    """ "validation / test" of one metric; "-" for a split the row lacks."""
    return " / ".join(f"{metrics[s][key]:.4f}" if s in metrics else "-" for s in EVAL_SPLITS)


def table(rows: list[dict]) -> str:
    """Markdown table. rows: {"name", "data", "chosen_on", "flags", "metrics":
    {split: evaluate's dict} for validation and/or test (a mean over "seeds" runs),
    "train_s", "wall_s", "best_rate"} (timings None, no "seeds", for popularity)."""
    head = ["model", "data", "chosen on", "flags", *(f"{k} val / test" for k in KEYS),
            "train s", "wall s", "best epoch ex/s", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"], r["data"], r["chosen_on"], f"`{r['flags']}`" if r["flags"] else "",
                 *(_cell(r["metrics"], k) for k in KEYS),
                 f"{r['train_s']:.0f}" if r["train_s"] is not None else "-",
                 f"{r['wall_s']:.0f}" if r["wall_s"] is not None else "-",
                 f"{r['best_rate']:,}" if r["best_rate"] else "-", str(r.get("seeds", "-"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def split_metrics(metrics: dict) -> dict:
    """{split: metrics} of a metrics.json, for the splits it evaluated."""
    return {s: metrics[s] for s in EVAL_SPLITS if s in metrics}


def popularity_metrics(metrics: dict) -> dict:
    """{split: popularity baseline} of a metrics.json ("popularity" is test's)."""
    names = {"validation": "popularity_validation", "test": "popularity"}
    return {s: metrics[n] for s, n in names.items() if n in metrics}


def mean_of_runs(runs: list[dict]) -> dict:
    """One row's runs (run_row's dicts, one per seed) as one: each split's metrics,
    train_s and wall_s averaged, the best best_rate; "per_seed" keeps each run's
    {split: metrics}."""
    per_seed = [split_metrics(r["metrics"]) for r in runs]
    metrics = {s: {k: sum(m[s][k] for m in per_seed) / len(runs) for k in per_seed[0][s]}
               for s in per_seed[0]}
    rates = [r["best_rate"] for r in runs if r["best_rate"]]
    return {"metrics": metrics, "per_seed": per_seed,
            "train_s": sum(r["train_s"] for r in runs) / len(runs),
            "wall_s": sum(r["wall_s"] for r in runs) / len(runs),
            "best_rate": max(rates) if rates else None}


def prepared_dirs(prepare, rows: dict) -> dict:
    """{"last": prepare(), "reference": prepare(reference=True)}: the data_dirs of one
    prepared data set; the reference timelines only when one of `rows` trains on them
    (a run of our rows alone skips that job pass), else None."""
    needed = any(row.data == "reference" for row in rows.values())
    return {"last": prepare(), "reference": prepare(reference=True) if needed else None}


def data_kind(row: Row, dirs: dict) -> str:
    """The dirs key `row` runs on: its own, but "last" for a "reference" row when no
    reference data_dir was given."""
    return "last" if row.data == "reference" and not dirs.get("reference") else row.data


def run_data_set(dirs: dict, rows: dict, work: str, exclude_seen: bool,
                 seeds: tuple[int, ...] = ()) -> list[dict]:
    """Runs every row on its data_dir (dirs: "last"/"reference"/"random" -> path; a
    "reference" row runs on "last" when dirs has no reference), each trained row once
    per seed (none: once, with its own default seed); the table's rows, popularity
    first (from the first row run on each data_dir)."""
    out, popularity = [], {}
    for name, row in rows.items():
        row = dataclasses.replace(row, data=data_kind(row, dirs))
        data_dir = dirs[row.data]
        if row.markov:  # counting has no seed
            runs = [run_markov(data_dir, work, exclude_seen)]
        elif row.tutorial_epochs:
            runs = [run_tutorial(data_dir, row.tutorial_epochs, work, exclude_seen, seed)
                    for seed in seeds or (None,)]
        else:
            runs = [run_row(data_dir, row.flags, work, exclude_seen, seed)
                    for seed in seeds or (None,)]
        popularity.setdefault(row.data, popularity_metrics(runs[0]["metrics"]))
        r = mean_of_runs(runs)
        out.append({"name": name, "data": row.data, "chosen_on": row.chosen_on,
                    "flags": " ".join(row.flags), "metrics": r["metrics"],
                    "per_seed": r["per_seed"], "seeds": len(runs),
                    "train_s": r["train_s"], "wall_s": r["wall_s"], "best_rate": r["best_rate"]})
        scores = " ".join(f"{s} top_10={m['top_10']:.4f}" for s, m in out[-1]["metrics"].items())
        print(f"{name}: {scores} train {r['train_s']:.0f}s wall {r['wall_s']:.0f}s",
              file=sys.stderr, flush=True)
    pop = [{"name": "popularity", "data": d, "chosen_on": "-", "flags": "", "metrics": m,
            "train_s": None, "wall_s": None, "best_rate": None} for d, m in popularity.items()]
    return pop + out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.quality", allow_abbrev=False,
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--ml100k", action="store_true",
                   help="real MovieLens 100K (recbole 1.2.1's copy, fetched into a cache, "
                   "never committed), prepared by the Beam job with its defaults; its table first")
    p.add_argument("--ml1m_synthetic", action="store_true",
                   help="beam_jobs.synthetic's defaults (ML-1M shape) prepared by the Beam job")
    p.add_argument("--last_dir", help="a data_dir made with --split=last")
    p.add_argument("--random_dir", help="with --last_dir: one made with --split=random "
                   "(the random-split row)")
    p.add_argument("--reference_dir", help="with --last_dir: the same ratings made with "
                   "--nolow_ratings_in_context (the reference generator's timelines), for "
                   "the tutorial's rows (default: they run on --last_dir)")
    p.add_argument("--tutorial_epochs", default="3,30",
                   help="comma-separated epoch counts: one tutorial's-code row each")
    p.add_argument("--exclude_seen", action="store_true",
                   help="rank without each user's already-rated movies in every row")
    p.add_argument("--row", action="append", default=[],
                   help='extra trainer row "NAME=FLAG FLAG ..." on the last split')
    p.add_argument("--only", action="append", default=[],
                   help="run only these rows (a name, or the part before its comma)")
    p.add_argument("--seeds", default="",
                   help="comma-separated seeds: each trained row runs once per seed and "
                   "reports the means (default: once, with its default seed)")
    p.add_argument("--markdown", help="also write the tables to this file")
    p.add_argument("--json", help="also write every row's numbers to this file")
    p.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(), "seqrec-quality"),
                   help="prepared data, the source snapshot and run outputs (reused)")
    a = p.parse_args(argv)
    try:
        epochs = [int(n) for n in a.tutorial_epochs.split(",") if n.strip()]
    except ValueError:
        epochs = [0]
    if any(n < 1 for n in epochs):
        p.error(f"--tutorial_epochs={a.tutorial_epochs}: give positive integers, e.g. 3,30")
    try:
        seeds = tuple(int(n) for n in a.seeds.split(",") if n.strip())
    except ValueError:
        p.error(f"--seeds={a.seeds}: give comma-separated integers, e.g. 42,1,2")
    if len(set(seeds)) != len(seeds):
        p.error(f"--seeds={a.seeds}: each seed once")
    for flag, d in (("--last_dir", a.last_dir), ("--random_dir", a.random_dir),
                    ("--reference_dir", a.reference_dir)):
        if d and not os.path.exists(os.path.join(d, schema.SUCCESS_FILE)):
            p.error(f"{flag}={d}: no {schema.SUCCESS_FILE}; give a finished beam_jobs.pipeline "
                    "output_dir")
    for flag, d in (("--random_dir", a.random_dir), ("--reference_dir", a.reference_dir)):
        if d and not a.last_dir:
            p.error(f"{flag} needs --last_dir")
    if not (a.ml100k or a.ml1m_synthetic or a.last_dir):
        p.error("give --ml100k, --ml1m_synthetic and/or --last_dir")
    rows = select_rows(epochs, a.row, a.only, bool(a.random_dir))
    if not rows:
        p.error(f"--only {a.only}: no such rows")
    os.makedirs(a.work_dir, exist_ok=True)
    work = os.path.abspath(a.work_dir)

    data_sets = []  # real data first
    if a.ml100k:
        data_sets.append(("Real MovieLens 100K", prepared_dirs(
            functools.partial(prepare_ml100k, work), rows)))
    if a.ml1m_synthetic:
        data_sets.append(("Synthetic, ML-1M shape", prepared_dirs(
            functools.partial(prepare_synthetic, work), rows)))
    if a.last_dir:
        data_sets.append((a.last_dir, {
            kind: d and os.path.abspath(d) for kind, d in (
                ("last", a.last_dir), ("reference", a.reference_dir), ("random", a.random_dir))}))
    seen = "seen movies excluded" if a.exclude_seen else "nothing excluded"
    texts, results = [], []
    for title, dirs in data_sets:
        print(f"== {title}", file=sys.stderr, flush=True)
        out = run_data_set(dirs, rows, work, a.exclude_seen, seeds)
        results.append({"data_set": title, "dirs": dirs, "exclude_seen": a.exclude_seen,
                        "seeds": list(seeds), "rows": out})
        runs = f"the mean of seeds {a.seeds}" if seeds else "one run"
        texts.append(f"### {title}\n\nEach metric: validation / test, {runs}; full ranking, "
                     f"{seen}.\n\n" + table(out))
    text = "\n\n".join(texts)
    print(text)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(text + "\n")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
