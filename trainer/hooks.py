"""What the loop does at epoch ends and at the end: evaluation and export."""
from __future__ import annotations

import shutil
import tempfile

import tensorflow as tf
from absl import logging

from beam_jobs import schema
from trainer import data, evaluate, export, markov, summaries
from trainer.config import TrainConfig

# Constant over a run: kept in metrics.json, not plotted per epoch.
_NOT_PLOTTED = ("num_queries",)
# Train examples per batch when counting successors (numpy work per batch).
COUNT_BATCH = 8192


class Evaluator:
    """Ranks the labels of the evaluation splits among the whole vocabulary (chief only).

    After every epoch `__call__(model, step)` evaluates the one split chosen by
    --eval_split (data.eval_split: validation when the data_dir has it); at the
    run's end `__call__(model, step, final=True)` evaluates every evaluation split
    the data_dir has (validation, test), so test is reported once per run. Each
    call writes metrics.json ({"step", "eval_split", <split>: {...},
    "popularity": {...}, ...}; the test split's popularity keeps the key
    "popularity", validation's is "popularity_validation") and the eval/
    summaries (<split>/top_10, ...), and returns what it wrote. A popularity
    baseline does not change while training: each is computed and plotted once.
    """

    def __init__(self, info: data.DataInfo, cfg: TrainConfig, log: tf.summary.SummaryWriter,
                 successors: markov.Successors | None = None):
        self.info, self.cfg, self.log = info, cfg, log
        # --markov_weight: the model's ranking blended with these (count_successors).
        self.blend = {"successors": successors, "markov_weight": cfg.model.markov_weight}
        t = cfg.trainer
        self.split = data.eval_split(info, t.eval_split)
        self.splits = data.eval_splits(info)
        # loop.prepare has checked, before any worker started, that the data has what
        # these options need (data.eval_split, data.check_seen).
        self.exclude = {"exclude_context": t.eval_exclude_context,
                        "exclude_seen": t.eval_exclude_seen}
        self.metrics_path = schema.join(cfg.model_dir, summaries.METRICS_FILE)
        self.datasets = {split: data.make_eval_dataset(info, t.eval_batch_size, split,
                                                       seen=t.eval_exclude_seen)
                         for split in self.splits}
        self._popularity: dict[str, dict] = {}

    def __call__(self, model, step: int, final: bool = False) -> dict:
        results = {"step": step, "eval_split": self.split}
        for split in self.splits if final else (self.split,):
            try:
                results.update(self._evaluate(model, split, step))
            except data.READ_ERRORS as e:
                raise data.reading_failed(self.info, split, e, f"evaluation at step {step} "
                                          "stopped (the checkpoint of that step is kept)") from None
        summaries.write_json(self.metrics_path, results)
        return results

    def _evaluate(self, model, split: str, step: int) -> dict:
        """{split: metrics, popularity key: its baseline} of one split; plotted and logged."""
        dataset, popularity_key = self.datasets[split], popularity_name(split)
        out = {}
        if split not in self._popularity:
            self._popularity[split] = out[popularity_key] = evaluate.popularity_baseline(
                dataset, self.info.movie_ids, self.info.counts, **self.exclude)
        out[split] = evaluate.evaluate_retrieval(model.query_model, model.candidate_model,
                                                 dataset, self.info.movie_ids, **self.exclude,
                                                 **self.blend)
        with self.log.as_default():
            for name, values in out.items():
                for k, v in values.items():
                    if k not in _NOT_PLOTTED:
                        summaries.scalar(f"{name}/{k}", v, step)
        logging.info("Step %d %s %s", step, split, summaries.fmt(out[split]))
        # Every call's metrics.json carries the baselines computed so far.
        return {**out, **{popularity_name(s): m for s, m in self._popularity.items()}}


def popularity_name(split: str) -> str:
    """metrics.json's key of a split's popularity baseline ("popularity": test's, as
    before validation splits existed)."""
    return "popularity" if split == schema.TEST else f"popularity_{split}"


def export_savedmodel(model, info: data.DataInfo, cfg: TrainConfig, is_chief: bool,
                      successors: markov.Successors | None = None) -> None:
    """Exports the towers (trainer/export.py) to cfg.export_uri: a new numbered version
    (or the directory itself with --noexport_versions), blended with `successors` when
    --markov_weight > 0. Every worker exports (saving may take part in collectives);
    only the chief there, the others into a temporary directory that is deleted."""
    towers = (model.query_model, model.candidate_model)
    vocab, k = schema.join(info.data_dir, schema.VOCAB_FILE), cfg.trainer.export_k
    blend = {"successors": successors, "markov_weight": cfg.model.markov_weight}
    if not is_chief:
        tmp = tempfile.mkdtemp(prefix="seqrec-worker-export-")
        export.export_model(*towers, info.movie_ids, tmp, vocab, k, **blend)
        shutil.rmtree(tmp, ignore_errors=True)
    elif cfg.trainer.export_versions:
        target = export.export_version(cfg.export_uri, *towers, info.movie_ids, vocab, k,
                                       **blend)
    else:
        target = export.export_model(*towers, info.movie_ids, cfg.export_uri, vocab, k,
                                     **blend)
    if is_chief:
        logging.info("Exported the SavedModel to %s (%d movies, k=%d)", target,
                     len(info.movie_ids), min(cfg.trainer.export_k, len(info.movie_ids)))


def count_successors(info: data.DataInfo) -> markov.Successors:
    """markov.count_successors (its defaults) over the train split, read once in file
    order (the same on every worker). A damaged shard stops the run naming it."""
    return markov.count_successors(
        train_batches(info, "counting successors (--markov_weight) stopped before training, "
                      "the last checkpoint is kept"), info.movie_ids)


def train_batches(info: data.DataInfo, stopped: str):
    """(contexts, labels) numpy batches of the train split, in file order; a damaged
    shard raises data.reading_failed's error (`stopped` says what it stopped)."""
    try:
        for b in data.make_eval_dataset(info, COUNT_BATCH, schema.TRAIN):
            yield b[schema.CONTEXT_MOVIE_ID].numpy(), b[schema.LABEL_MOVIE_ID].numpy()
    except data.READ_ERRORS as e:
        raise data.reading_failed(info, schema.TRAIN, e, stopped) from None
