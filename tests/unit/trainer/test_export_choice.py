"""Which checkpoint is exported (export_choice.py): spec.output.checkpoint, and exportBest after a maxDrop stop."""

from __future__ import annotations

import pytest

from sft_trainer.exit_codes import ConfigError
from sft_trainer.export_choice import check_export_source, choose_export

GOLDEN = [{"step": 5, "pass_rate": 0.5}, {"step": 10, "pass_rate": 0.75}, {"step": 15, "pass_rate": 0.75},
          {"step": 20, "pass_rate": 0.25}]
LOSSES = {5: 2.0, 10: 1.2, 15: 1.2, 20: 1.4}
STOP = {"step": 20, "best_step": 10, "best_pass_rate": 0.75, "pass_rate": 0.25, "on_regression": "exportBest"}


@pytest.mark.parametrize("criterion, losses, golden, stop, step, chosen_by, words", [
    pytest.param("last", LOSSES, GOLDEN, None, 20, "last", "last: the weights at the end of training (step 20)",
                 id="last exports the end of training whatever the figures"),
    pytest.param("bestEvalLoss", LOSSES, GOLDEN, None, 15, "bestEvalLoss", "eval loss 1.2000 at checkpoint 15",
                 id="bestEvalLoss takes the lowest eval loss, the newer of equals as retention does"),
    pytest.param("bestEvalLoss", {}, GOLDEN, None, 20, "last", "no committed checkpoint has an eval loss",
                 id="bestEvalLoss with no checkpoint evaluated falls back to the last and says why"),
    pytest.param("bestGoldenPassRate", LOSSES, GOLDEN, None, 10, "bestGoldenPassRate",
                 "golden pass rate 75.00% at checkpoint 10, the highest of 4 scored checkpoints",
                 id="bestGoldenPassRate takes the highest pass rate, the earlier of equals as maxDrop does"),
    pytest.param("bestGoldenPassRate", LOSSES, [], None, 20, "last", "no checkpoint was scored",
                 id="bestGoldenPassRate with nothing scored falls back to the last and says why"),
    pytest.param("last", LOSSES, GOLDEN, STOP, 10, "bestGoldenPassRate", "onRegression: exportBest after the maxDrop "
                 "stop at checkpoint 20: checkpoint 10 has the best golden pass rate 75.00%",
                 id="an exportBest stop exports the golden best whatever output.checkpoint says"),
    pytest.param("bestEvalLoss", LOSSES, GOLDEN, {**STOP, "on_regression": "fail"}, 15, "bestEvalLoss", "eval loss",
                 id="a fail stop leaves the criterion alone (the job fails anyway)"),
])
def test_choose_export(criterion, losses, golden, stop, step, chosen_by, words):
    choice = choose_export(criterion, last_step=20, eval_losses=losses, golden=golden, golden_stop=stop)
    assert (choice.step, choice.criterion) == (step, chosen_by)
    assert words in choice.reason
    assert choice.to_status() == {"step": step, "criterion": chosen_by, "reason": choice.reason}


class _Cfg:
    def __init__(self, criterion: str):
        self.export_checkpoint = criterion


@pytest.mark.parametrize("criterion", ["bestEvalLoss", "bestGoldenPassRate"])
def test_a_best_criterion_without_a_checkpoint_store_is_a_config_error(criterion):
    with pytest.raises(ConfigError, match=f"spec.output.checkpoint: {criterion} loads the chosen checkpoint back "
                                          "from the checkpoint store; set spec.checkpoints.uri"):
        check_export_source(_Cfg(criterion), None)
    check_export_source(_Cfg(criterion), object())  # a store: fine
    check_export_source(_Cfg("last"), None)  # last needs none


def test_sftctl_run_prints_which_checkpoint_the_model_is(tmp_path):
    from rich.console import Console

    from sft_trainer.local import _print_summary
    from sft_trainer.train import TrainResult

    choice = choose_export("bestGoldenPassRate", last_step=20, eval_losses=LOSSES, golden=GOLDEN)
    result = TrainResult(global_step=20, max_steps=20, output_uri=str(tmp_path / "model"), exported=choice.to_dict())
    console = Console(record=True, width=400)
    _print_summary(console, result, tmp_path, None)
    assert ("exported checkpoint 10: spec.output.checkpoint: bestGoldenPassRate: golden pass rate 75.00% at "
            "checkpoint 10, the highest of 4 scored checkpoints") in console.export_text()


def test_a_chosen_checkpoint_without_weights_fails_instead_of_exporting_the_last_ones(tmp_path):
    from sft_trainer.checkpoint_store import CheckpointError, CheckpointStore
    from sft_trainer.export_choice import _load_checkpoint

    local = tmp_path / "local"
    local.mkdir()
    (local / "trainer_state.json").write_text("{}")
    store = CheckpointStore(str(tmp_path / "ckpt"))
    store.commit(local, 10)
    with pytest.raises(CheckpointError, match="checkpoint-10/: no model, adapter or DeepSpeed weights to export"):
        _load_checkpoint(None, store, 10, tmp_path / "work")
