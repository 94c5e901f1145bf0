"""Supervised fine-tuning: TRL's ``SFTConfig`` and ``SFTTrainer`` on conversational rows.

The trainer class adds one thing to TRL's: evaluation also reports the loss of each task_type, and
training rows are packed in data order (``packing.py``) instead of TRL's length-sorted BFD.
"""

from __future__ import annotations

from typing import Any

from ..data import task_types, to_trl_rows

OVERALL = "all"  # metrics.OVERALL_TASK: the eval set of every task together


class SFT:
    name = "sft"

    def training_args(self, cfg: Any, *, has_eval: bool) -> Any:
        return cfg.sft_config(has_eval=has_eval)

    def datasets(self, cfg: Any, splits: Any) -> tuple[Any, dict[str, Any] | None]:
        """The training set, and the evaluation sets by task_type (OVERALL is every task together)."""
        from datasets import Dataset

        train = Dataset.from_list(to_trl_rows(splits.train, cfg.loss_on))
        if not splits.validation:
            return train, None
        evals = {OVERALL: Dataset.from_list(to_trl_rows(splits.validation, cfg.loss_on))}
        for t in task_types(splits.validation):
            if t != OVERALL:
                rows = [e for e in splits.validation if e["task_type"] == t]
                evals[t] = Dataset.from_list(to_trl_rows(rows, cfg.loss_on))
        if len(evals) == 2:  # a single task: its loss is the overall loss
            evals = {OVERALL: evals[OVERALL]}
        return train, evals

    def test_dataset(self, cfg: Any, rows: list[dict[str, Any]]) -> Any:
        from datasets import Dataset

        return Dataset.from_list(to_trl_rows(rows, cfg.loss_on))

    def trainer_class(self) -> type:
        return task_eval_trainer_class()


def task_eval_trainer_class() -> type:
    from trl import SFTTrainer

    class TaskEvalSFTTrainer(SFTTrainer):
        """SFTTrainer whose evaluation also reports the loss of each task_type.

        The overall eval set goes through the normal path (``eval_loss``, callbacks, early
        stopping, best-checkpoint tracking); each task's set adds ``eval_<task>_loss`` to the same
        log entry, which the metrics callback exports as ``sftjob_eval_loss{task_type=...}``.
        """

        task_eval_datasets: dict[str, Any] = {}
        _pending: dict[str, float] = {}

        def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
            """Training rows packed in data order (packing.py), not TRL's length-sorted BFD, whose
            rows hold one task each when length follows the task; evaluation sets keep TRL's."""
            from datasets import Dataset

            from ..packing import pack_mixed

            mixed = (dataset_name == "train" and packing and args.packing_strategy == "bfd"
                     and isinstance(dataset, Dataset))
            out = super()._prepare_dataset(dataset, processing_class, args, packing and not mixed,
                                           formatting_func, dataset_name)
            return pack_mixed(out, args.max_length) if mixed else out

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            per_task: dict[str, float] = {}
            if eval_dataset is None and metric_key_prefix == "eval":
                for task, ds in self.task_eval_datasets.items():
                    out = self.evaluation_loop(
                        self.get_eval_dataloader(ds), description=f"Evaluation ({task})",
                        prediction_loss_only=True, ignore_keys=ignore_keys, metric_key_prefix=f"eval_{task}",
                    )
                    if f"eval_{task}_loss" in out.metrics:
                        per_task[f"eval_{task}_loss"] = float(out.metrics[f"eval_{task}_loss"])
                self._metrics["eval"].clear()  # token stats of the per-task passes would skew the overall ones
            self._pending = per_task
            try:
                metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            finally:
                self._pending = {}
            metrics.update(per_task)
            return metrics

        def log(self, logs, start_time=None):
            if self._pending and "eval_loss" in logs:
                logs = {**logs, **self._pending}
            return super().log(logs, start_time)

    return TaskEvalSFTTrainer
