"""Training defaults by regime, best-epoch restore and the trivial-predictor warning."""

from __future__ import annotations

import logging
import warnings

import lightning.pytorch as pl
import numpy as np
import pytest
import scvi
import torch

from scvi_scgpt import SCGPT
from scvi_scgpt.train import PRESETS, NoBetterThanTrivialWarning
from tests._builders import make_structured_counts

TINY = {"d_model": 32, "n_heads": 2, "d_hid": 32, "n_layers": 2, "dropout": 0.0}
QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


@pytest.fixture(autouse=True)
def _seed():
    scvi.settings.seed = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("always", NoBetterThanTrivialWarning)
        yield


def _planted(n_cells: int = 240, seed: int = 0):
    adata = make_structured_counts(n_cells=n_cells, n_genes=60, n_batches=1, seed=seed)
    SCGPT.setup_anndata(adata, labels_key="cell_type")
    return adata


def _trivial_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, NoBetterThanTrivialWarning)]


def test_annotation_defaults_from_scratch_beat_the_majority_class(caplog):
    adata = _planted()
    model = SCGPT(adata, **TINY)
    assert model.training_regime == "from_scratch"
    with (
        caplog.at_level(logging.INFO, logger="scvi_scgpt"),
        warnings.catch_warnings(record=True) as record,
    ):
        warnings.simplefilter("always")
        model.train("annotation", **QUIET)
    assert not _trivial_warnings(record)
    scratch = PRESETS["annotation"].for_regime("from_scratch")
    used = model.training_task_["hyperparameters"]
    assert used["lr"] == scratch.lr and used["max_epochs"] == scratch.max_epochs
    lines = [r.getMessage() for r in caplog.records if "regime" in r.getMessage()]
    assert len(lines) == 1 and "from-scratch" in lines[0] and f"lr={scratch.lr:g}" in lines[0]
    query = _planted(120, seed=1)
    pred = np.asarray(model.predict(query)).astype(str)
    truth = query.obs["cell_type"].to_numpy().astype(str)
    _, counts = np.unique(truth, return_counts=True)
    assert np.mean(pred == truth) > counts.max() / counts.sum() + 0.2
    assert model.training_regime == "fine_tune"  # continued training fine-tunes


def test_regime_of_a_pretrained_model_and_explicit_values_win(
    official_dir, official_cells, caplog
):
    adata = official_cells.copy()
    SCGPT.setup_anndata(adata)
    assert SCGPT(adata, **TINY).training_regime == "from_scratch"
    model = SCGPT.from_pretrained(official_dir / "zeroshot_model", adata, max_seq_len=128)
    assert model.training_regime == "fine_tune"
    with caplog.at_level(logging.INFO, logger="scvi_scgpt"):
        model.train("gep", max_epochs=1, **QUIET)
    fine = PRESETS["gep"].for_regime("fine_tune")
    assert model.training_task_["regime"] == "fine_tune"
    assert model.training_task_["hyperparameters"]["lr"] == fine.lr
    lines = [r.getMessage() for r in caplog.records if "regime" in r.getMessage()]
    assert len(lines) == 1 and "fine-tune" in lines[0] and "max_epochs=1 (given)" in lines[0]
    model.train("gep", max_epochs=1, lr=5e-4, regime="from_scratch", **QUIET)
    assert model.training_task_["regime"] == "from_scratch"
    assert model.training_task_["hyperparameters"]["lr"] == 5e-4


class _Snapshots(pl.Callback):
    """Weights at every validation; the last epoch's weights are spoiled before it."""

    def __init__(self, spoil_epoch: int) -> None:
        self.states: dict[int, dict[str, torch.Tensor]] = {}
        self.spoil_epoch = spoil_epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (
            trainer.current_epoch == self.spoil_epoch
            and batch_idx == trainer.num_training_batches - 1
        ):
            with torch.no_grad():
                for p in pl_module.module.parameters():
                    p.add_(torch.randn_like(p))

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.states[trainer.current_epoch] = {
                k: v.detach().clone() for k, v in pl_module.module.state_dict().items()
            }


def test_best_epoch_is_restored_and_recorded():
    adata = _planted(160)
    model = SCGPT(adata, **TINY)
    snaps = _Snapshots(spoil_epoch=3)
    model.train("annotation", max_epochs=4, lr=1e-3, callbacks=[snaps], **QUIET)
    val = model.history_["validation_loss"].iloc[:, 0].to_numpy()
    best = int(np.argmin(val))
    record = model.history_["best_epoch"]
    assert int(record["best_epoch"].iloc[-1]) == best != 3
    assert record["monitor"].iloc[-1] == "validation_loss"
    for key, value in model.module.state_dict().items():
        torch.testing.assert_close(value.cpu(), snaps.states[best][key], rtol=0, atol=0)
    # switched off: the last (spoiled) weights stay
    model = SCGPT(adata, **TINY)
    snaps = _Snapshots(spoil_epoch=1)
    model.train("annotation", max_epochs=2, lr=1e-3, best_epoch=False, callbacks=[snaps], **QUIET)
    assert "best_epoch" not in model.history_
    torch.testing.assert_close(
        model.module.state_dict()["encoder.embedding.weight"].cpu(),
        snaps.states[1]["encoder.embedding.weight"],
    )


def test_best_epoch_needs_validation_cells():
    model = SCGPT(_planted(80), **TINY)
    with pytest.raises(ValueError, match="validation"):
        model.train("annotation", max_epochs=1, train_size=1.0, best_epoch=True, **QUIET)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model.train("annotation", max_epochs=1, train_size=1.0, **QUIET)  # quietly off
    assert "best_epoch" not in model.history_ and not _trivial_warnings(record)


@pytest.mark.parametrize("task", ["annotation", "gep"])
def test_warning_fires_on_an_untrainable_setting(task):
    model = SCGPT(_planted(160), **TINY)
    with pytest.warns(NoBetterThanTrivialWarning) as record:
        model.train(task, max_epochs=1, lr=0.0, **QUIET)
    (text,) = _trivial_warnings(record)
    assert "no better than a trivial predictor" in text and "from_pretrained" in text
    check = model.training_task_["trivial_check"]
    assert check["no_better"] and check["metric"] in ("accuracy", "GEP MSE")


def test_a_saved_trained_model_loads_in_the_fine_tune_regime(tmp_path):
    adata = _planted(80)
    model = SCGPT(adata, **TINY)
    model.save(tmp_path / "new")
    assert SCGPT.load(tmp_path / "new", adata).training_regime == "from_scratch"
    model.train("annotation", max_epochs=2, **QUIET)
    model.save(tmp_path / "trained")
    loaded = SCGPT.load(tmp_path / "trained", adata)
    assert loaded.training_regime == "fine_tune"
    assert loaded.training_task_["regime"] == "from_scratch"
    assert list(loaded.history_["best_epoch"]["monitor"]) == ["validation_loss"]
