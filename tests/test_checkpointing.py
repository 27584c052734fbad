"""Checkpoints: ``last.ckpt`` is the last epoch even when the monitored metric stops improving."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from rfcx_lightning.checkpointing import AtomicCheckpointIO, fold_checkpoints


class _WorseEveryEpoch(pl.LightningModule):
    """A linear model whose logged validation score falls every epoch, so the best epoch is the first."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/score", 1.0 - 0.1 * self.current_epoch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_last_ckpt_is_the_final_epoch_and_best_ckpt_the_best(tmp_path):
    loader = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=fold_checkpoints(tmp_path, "val/score", "max"),
                         plugins=[AtomicCheckpointIO()])
    model = _WorseEveryEpoch()
    trainer.fit(model, loader, loader)
    last = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)
    best = torch.load(tmp_path / "best.ckpt", map_location="cpu", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (2, 6)     # Lightning's save_last=True would stop at epoch 0
    assert best["epoch"] == 0
    torch.testing.assert_close(last["state_dict"]["layer.weight"], model.layer.weight.detach())  # the final weights
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]
