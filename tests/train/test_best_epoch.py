"""BestEpoch: keeps and restores the weights of the best validation epoch."""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from scvi_scgpt.train._best_epoch import BestEpoch


class _Plan(pl.LightningModule):
    """A training plan whose validation metric follows a planted sequence."""

    def __init__(self, planted: list[float], name: str = "validation_loss") -> None:
        super().__init__()
        self.module = torch.nn.Linear(3, 1)
        self.planted = planted
        self.name = name

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return self.module(x).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        if not self.trainer.sanity_checking:
            value = self.planted[self.current_epoch]
            self.log(self.name, torch.tensor(value), on_epoch=True, on_step=False)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _Snapshots(pl.Callback):
    """Weights at each epoch's validation, to compare the restored ones with."""

    def __init__(self) -> None:
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.states[trainer.current_epoch] = {
                k: v.detach().clone() for k, v in pl_module.module.state_dict().items()
            }


def _fit(plan: _Plan, callbacks: list, epochs: int, sanity: int = 0) -> None:
    data = DataLoader(TensorDataset(torch.randn(16, 3)), batch_size=4)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=sanity,
        callbacks=callbacks,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(plan, data, data)


@pytest.mark.parametrize(
    ("mode", "planted", "best"),
    [("min", [3.0, 1.0, 2.0, 4.0], 1), ("max", [0.2, 0.5, 0.9, 0.4], 2)],
)
def test_restores_the_weights_of_the_recorded_epoch(mode, planted, best):
    torch.manual_seed(0)
    plan = _Plan(planted)
    keep, snaps = BestEpoch(mode=mode), _Snapshots()
    _fit(plan, [snaps, keep], epochs=len(planted), sanity=1)
    assert keep.best_epoch == best and keep.best_value == pytest.approx(planted[best])
    assert keep.restored and keep.last_epoch == len(planted) - 1
    assert keep.n_validated == len(planted) and keep.best_index == best
    # the weights moved after the best epoch, and the model holds the best epoch's again
    last = snaps.states[len(planted) - 1]
    assert not torch.equal(last["weight"], snaps.states[best]["weight"])
    for key, value in plan.module.state_dict().items():
        torch.testing.assert_close(value, snaps.states[best][key], rtol=0, atol=0)
    assert keep.best_metrics["validation_loss"] == pytest.approx(planted[best])
    assert keep.metrics() == keep.best_metrics
    assert keep.last_metrics["validation_loss"] == pytest.approx(planted[-1])
    assert keep.summary() == {
        "epoch": best,
        "monitor": "validation_loss",
        "mode": mode,
        "value": pytest.approx(planted[best]),
        "restored": True,
    }


def test_ties_keep_the_earlier_epoch_and_restore_can_be_off():
    torch.manual_seed(0)
    plan = _Plan([2.0, 1.0, 1.0])
    keep, snaps = BestEpoch(restore=False), _Snapshots()
    _fit(plan, [snaps, keep], epochs=3)
    assert keep.best_epoch == 1 and not keep.restored
    assert keep.metrics()["validation_loss"] == 1.0 == keep.best_metrics["validation_loss"]
    torch.testing.assert_close(plan.module.weight, snaps.states[2]["weight"], rtol=0, atol=0)
    torch.testing.assert_close(keep.best_state()["weight"], snaps.states[1]["weight"])


def test_missing_metric_keeps_the_last_weights(caplog):
    torch.manual_seed(0)
    plan = _Plan([1.0, 2.0], name="something_else")
    keep = BestEpoch()
    _fit(plan, [keep], epochs=2)
    assert keep.best_epoch is None and not keep.restored and keep.best_state() is None
    assert any("was not logged" in r.getMessage() for r in caplog.records)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        BestEpoch(mode="lowest")
    with pytest.raises(ValueError, match="min_delta"):
        BestEpoch(min_delta=-1.0)
