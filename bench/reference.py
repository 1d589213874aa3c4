"""The published training mechanics, rebuilt as a baseline to measure against (not used for training).

What it reproduces: dense float rows served by a per-item DataLoader, random numbers drawn on the
host and copied over, one host → device copy per batch, the plain (unfused) Adam, and evaluation by
XOR-ing each query against 100-code blocks of the database and re-sorting a running top list.
The model and its loss are ours (same arithmetic), so only the mechanics differ.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import DataLoader, Dataset


class DenseRows(Dataset):
    """Rows of a densified TF-IDF matrix, one item at a time."""

    def __init__(self, matrix: sp.csr_matrix):
        self.rows = torch.from_numpy(matrix.toarray().astype(np.float32))

    def __len__(self) -> int:
        return self.rows.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.rows[index]


def reference_loader(rows: Dataset, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """Batches of `rows` (a DenseRows, densified once by the caller, or a Subset of one)."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(rows, batch_size=batch_size, shuffle=shuffle, generator=generator)


def reference_epoch(model, optimizer, scheduler, loader: DataLoader, device: torch.device) -> float:
    model.train()
    total = 0.0
    for batch in loader:
        batch = batch.to(device)
        noise = {k: v.to(device) for k, v in model.sample_noise(len(batch), "cpu").items()}
        loss = model.loss_from_noise(batch, noise)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item()  # a device → host sync per step, as a logging loop does
    return total


@torch.no_grad()
def reference_codes(model, loader: DataLoader, device: torch.device) -> torch.Tensor:
    model.eval()
    return torch.cat([(model.embed(batch.to(device)) > 0).to(torch.uint8) for batch in loader])


@torch.no_grad()
def reference_topk(queries: torch.Tensor, database: torch.Tensor, k: int, block: int = 100) -> torch.Tensor:
    """uint8 0/1 codes [q, m], [n, m] → top-k database indices per query, by XOR over 100-code blocks."""
    n_queries, n_bits = queries.shape
    top_scores = torch.full((n_queries, k + block), n_bits + 1, dtype=torch.int64, device=queries.device)
    top_index = torch.zeros((n_queries, k + block), dtype=torch.int64, device=queries.device)
    for start in range(0, database.shape[0], block):
        candidates = database[start:start + block]
        scores = (queries[:, None, :] ^ candidates[None, :, :]).sum(dim=2)
        width = candidates.shape[0]
        top_scores[:, -width:] = scores
        top_index[:, -width:] = torch.arange(start, start + width, device=queries.device)
        top_scores, order = top_scores.sort(dim=1, stable=True)
        top_index = torch.gather(top_index, 1, order)
    return top_index[:, :k]


def reference_precision(top_index: torch.Tensor, query_labels: np.ndarray, db_labels: np.ndarray) -> float:
    q = torch.from_numpy(query_labels.astype(np.int16))
    d = torch.from_numpy(db_labels.astype(np.int16))
    relevant = ((d[top_index.cpu()] & q[:, None, :]).sum(dim=2) > 0).float()
    return relevant.mean().item()
