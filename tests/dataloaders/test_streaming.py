from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import scvi
import torch

from scvi_scgpt import SCGPT, GeneVocab
from scvi_scgpt.data import StreamingAnnDataModule
from tests._builders import make_structured_counts, write_annbatch_collection, write_soma

QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


@pytest.fixture
def files(tmp_path):
    paths = []
    for i, n in enumerate((130, 90, 75)):
        adata = make_structured_counts(n, seed=i)
        if i == 1:
            adata = adata[:, ::-1].copy()  # other gene order
        path = tmp_path / f"part{i}.h5ad"
        adata.write_h5ad(path)
        paths.append(path)
    zarr_path = tmp_path / "part3.zarr"
    make_structured_counts(60, seed=9).write_zarr(zarr_path)
    return [*paths, zarr_path]


def _cells(stream, epoch):
    return np.concatenate([b["cell_index"] for b in _iterate(stream, epoch)])


def _iterate(stream, epoch):
    stream.epoch = epoch
    return list(iter(stream))


def test_vocab_from_files_and_every_cell_once_per_epoch(files):
    vocab = GeneVocab.from_anndata_files(files)
    assert len(vocab) == 80 + 3
    dm = StreamingAnnDataModule(files, vocab, batch_size=16, block_size=32)
    assert dm.n_obs == 355
    stream = dm.train_stream
    e0, e1 = _cells(stream, 0), _cells(stream, 1)
    assert sorted(e0.tolist()) == list(range(355)) == sorted(e1.tolist())
    assert not np.array_equal(e0, e1)  # reshuffled each epoch
    assert all(len(b["cell_index"]) <= 16 for b in _iterate(stream, 0))


def test_ranks_read_disjoint_shards_with_equal_steps(files):
    vocab = GeneVocab.from_anndata_files(files)
    seen, steps = [], []
    for rank in range(2):
        dm = StreamingAnnDataModule(files, vocab, batch_size=16, block_size=32)
        dm.train_stream.rank, dm.train_stream.world_size = rank, 2
        batches = _iterate(dm.train_stream, 0)
        steps.append(len(batches))
        seen.append(set(np.concatenate([b["cell_index"] for b in batches]).tolist()))
    assert steps[0] == steps[1] > 0
    assert not seen[0] & seen[1]


def _tiny_streaming_model(files, max_seq_len: int):
    """A streaming datamodule over ``files`` and a one-layer model on its vocabulary."""
    scvi.settings.seed = 0
    vocab = GeneVocab.from_anndata_files(files)
    dm = StreamingAnnDataModule(files, vocab, batch_size=32, block_size=64)
    example = dm.example_adata()
    SCGPT.setup_anndata(example)
    model = SCGPT(
        example,
        vocab=vocab,
        max_seq_len=max_seq_len,
        d_model=16,
        n_heads=2,
        d_hid=16,
        n_layers=1,
        dropout=0.0,
    )
    return dm, model


def test_streaming_pretraining_checkpoint_and_resume(files, tmp_path):
    dm, model = _tiny_streaming_model(files, max_seq_len=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(
            "pretrain",
            datamodule=dm,
            max_epochs=1,
            lr=2e-3,
            warmup_steps=2,
            checkpoint_dir=tmp_path / "ckpt",
            checkpoint_every_n_steps=3,
            **QUIET,
        )
        ckpt = tmp_path / "ckpt" / "last.ckpt"
        assert ckpt.is_file() and not list((tmp_path / "ckpt").glob(".*tmp*"))
        model.train(
            "pretrain",
            datamodule=dm,
            max_epochs=2,
            lr=2e-3,
            warmup_steps=2,
            ckpt_path=str(ckpt),
            **QUIET,
        )
    assert len(model.history_["gep_train"]) >= 1
    assert model.trainer.current_epoch == 2


def test_streaming_cosine_schedule_spans_the_whole_run(files):
    """Lightning cannot count a stream's batches; the schedule must still span all steps."""
    from lightning.pytorch import Callback

    class RecordLr(Callback):
        def __init__(self):
            self.lrs = []

        def on_train_batch_start(self, trainer, *args):
            self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    dm, model = _tiny_streaming_model(files, max_seq_len=32)
    record = RecordLr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(
            "pretrain",
            datamodule=dm,
            max_epochs=3,
            lr=1e-2,
            warmup_steps=2,
            lr_schedule="cosine",
            callbacks=[record],
            **QUIET,
        )
    lrs = np.asarray(record.lrs)
    steps = dm.steps_per_epoch()
    assert len(lrs) == 3 * steps
    assert lrs.max() == pytest.approx(1e-2, rel=0.05)
    # cosine decay over all the steps: halfway down near the middle, still > 0 at the end
    assert np.all(lrs[2:] > 0)
    assert np.all(np.diff(lrs[2:]) <= 1e-12)
    middle = lrs[2 + (len(lrs) - 2) // 2]
    assert 0.3e-2 < middle < 0.7e-2


def test_streaming_rejects_foreign_vocab(files):
    vocab = GeneVocab.from_anndata_files(files)
    dm = StreamingAnnDataModule(files, vocab, batch_size=32)
    example = dm.example_adata()
    SCGPT.setup_anndata(example)
    other = GeneVocab.from_genes(list(example.var_names)[::-1])
    model = SCGPT(
        example, vocab=other, max_seq_len=32, d_model=16, n_heads=2, d_hid=16, n_layers=1
    )
    with pytest.raises(ValueError, match="vocabulary differs"):
        model.train("pretrain", datamodule=dm, max_epochs=1)
    with pytest.raises(FileNotFoundError):
        StreamingAnnDataModule([Path("nope.h5ad")], vocab)


def test_two_process_ddp_pretraining_disjoint_cells(files, tmp_path):
    script = Path(__file__).with_name("ddp_pretrain.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    seen = [set(json.loads((tmp_path / f"cells_rank{r}.json").read_text())) for r in (0, 1)]
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    w0, w1 = (np.load(tmp_path / f"weights_rank{r}.npy") for r in (0, 1))
    np.testing.assert_array_equal(w0, w1)


def _train_tiny_model(dm, vocab):
    """Train a tiny model on ``dm`` for 2 epochs; its losses are finite and its weights move."""
    example = dm.example_adata()
    SCGPT.setup_anndata(example)
    model = SCGPT(example, vocab=vocab, max_seq_len=64, d_model=16, n_heads=2, d_hid=16,
                  n_layers=1, dropout=0.0)  # fmt: skip
    before = model.module.encoder.embedding.weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train("gep", datamodule=dm, max_epochs=2, lr=2e-3, **QUIET)
    assert np.isfinite(model.history_["train_loss"].to_numpy(dtype=float)).all()
    assert not torch.equal(before, model.module.encoder.embedding.weight.detach())
    return model


def test_training_streams_from_a_soma_experiment(tmp_path):
    """The atlas sources feed training too: a TileDB-SOMA experiment with a value filter."""
    adata = make_structured_counts(150, seed=4)
    write_soma(adata, tmp_path / "exp")
    vocab = GeneVocab.from_genes(adata.var_names)
    dm = StreamingAnnDataModule(
        str(tmp_path / "exp"),
        vocab,
        value_filter="cell_type != 'type0'",
        batch_size=16,
        block_size=32,
    )
    chosen = int((adata.obs["cell_type"] != "type0").sum())
    assert dm.n_obs == chosen
    assert sorted(_cells(dm.train_stream, 0).tolist()) == list(range(chosen))
    assert list(dm.example_adata().var_names) == list(adata.var_names)
    model = _train_tiny_model(dm, vocab)
    assert len(model.history_["train_loss"]) == 2


def test_training_streams_from_an_annbatch_collection(tmp_path):
    """A collection written for scvi-tools' ``setup_annbatch`` trains SCGPT (Python >= 3.12)."""
    adata = make_structured_counts(120, seed=6)
    adata[:70].write_h5ad(tmp_path / "a.h5ad")
    adata[70:].write_h5ad(tmp_path / "b.h5ad")
    collection = write_annbatch_collection([tmp_path / "a.h5ad", tmp_path / "b.h5ad"],
                                           tmp_path / "c.zarr")  # fmt: skip
    vocab = GeneVocab.from_genes(adata.var_names)
    dm = StreamingAnnDataModule(collection, vocab, batch_size=16, block_size=32)
    assert dm.n_obs == adata.n_obs
    # every cell once per epoch, whatever order annbatch wrote them in
    assert sorted(_cells(dm.train_stream, 0).tolist()) == list(range(adata.n_obs))
    _train_tiny_model(dm, vocab)
