"""What the loop does at epoch ends and at the end: evaluation and export."""
from __future__ import annotations

import shutil
import tempfile

import tensorflow as tf
from absl import logging

from beam_jobs import schema
from trainer import data, evaluate, export, summaries
from trainer.config import TrainConfig

# Constant over a run: kept in metrics.json, not plotted per epoch.
_NOT_PLOTTED = ("num_queries",)


class Evaluator:
    """Ranks the test split's labels among the whole vocabulary (chief only).

    Each call writes metrics.json ({"step", "test": {...}, "popularity": {...}})
    and the eval/ summaries, and returns what it wrote. The popularity baseline
    does not change while training: it is computed and plotted once.
    """

    def __init__(self, info: data.DataInfo, cfg: TrainConfig, log: tf.summary.SummaryWriter):
        self.info, self.cfg, self.log = info, cfg, log
        self.metrics_path = schema.join(cfg.model_dir, summaries.METRICS_FILE)
        self.dataset = data.make_eval_dataset(info, cfg.trainer.eval_batch_size)
        self._popularity = None

    def __call__(self, model, step: int) -> dict:
        exclude = self.cfg.trainer.eval_exclude_context
        first = self._popularity is None
        if first:
            self._popularity = evaluate.popularity_baseline(
                self.dataset, self.info.movie_ids, self.info.counts, exclude_context=exclude)
        test = evaluate.evaluate_retrieval(model.query_model, model.candidate_model,
                                           self.dataset, self.info.movie_ids,
                                           exclude_context=exclude)
        results = {"step": step, "test": test, "popularity": self._popularity}
        summaries.write_json(self.metrics_path, results)
        with self.log.as_default():
            for split, values in (("test", test), ("popularity", self._popularity)):
                if split == "popularity" and not first:
                    continue
                for k, v in values.items():
                    if k not in _NOT_PLOTTED:
                        summaries.scalar(f"{split}/{k}", v, step)
        logging.info("Step %d test %s", step, summaries.fmt(test))
        return results


def export_savedmodel(model, info: data.DataInfo, cfg: TrainConfig, is_chief: bool) -> None:
    """Exports the towers (trainer/export.py) to cfg.export_uri: a new numbered version
    (or the directory itself with --noexport_versions). Every worker exports (saving
    may take part in collectives); only the chief there, the others into a temporary
    directory that is deleted."""
    towers = (model.query_model, model.candidate_model)
    vocab, k = schema.join(info.data_dir, schema.VOCAB_FILE), cfg.trainer.export_k
    if not is_chief:
        tmp = tempfile.mkdtemp(prefix="seqrec-worker-export-")
        export.export_model(*towers, info.movie_ids, tmp, vocab, k)
        shutil.rmtree(tmp, ignore_errors=True)
    elif cfg.trainer.export_versions:
        target = export.export_version(cfg.export_uri, *towers, info.movie_ids, vocab, k)
    else:
        target = export.export_model(*towers, info.movie_ids, cfg.export_uri, vocab, k)
    if is_chief:
        logging.info("Exported the SavedModel to %s (%d movies, k=%d)", target,
                     len(info.movie_ids), min(cfg.trainer.export_k, len(info.movie_ids)))
