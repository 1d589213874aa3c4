"""A CSR matrix held on a torch device (training, evaluation, serving), sliced into batches there.

The whole split is moved to the device once; each batch is assembled with a few vectorised
gathers, so an epoch never touches the host (no per-item DataLoader, no copy per batch).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import scipy.sparse as sp
import torch


def csr_tensor(crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor, shape) -> torch.Tensor:
    with warnings.catch_warnings():  # torch calls sparse CSR "beta" on every construction
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, val, size=shape, check_invariants=False)


class DeviceCSR:
    """Rows of a SciPy CSR matrix as (crow, col, values) tensors on `device`."""

    def __init__(self, matrix: sp.csr_matrix, device: torch.device):
        matrix = sp.csr_matrix(matrix, dtype=np.float32)
        matrix.sort_indices()
        self.shape = matrix.shape
        self.device = device
        self.crow = torch.from_numpy(matrix.indptr.astype(np.int64)).to(device)
        self.col = torch.from_numpy(matrix.indices.astype(np.int64)).to(device)
        self.values = torch.from_numpy(np.array(matrix.data, dtype=np.float32)).to(device)

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, index: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """The given rows (a 1-D int64 tensor on the device) as a sparse CSR batch; where the bool `keep` is
        False the batch's row is empty instead."""
        starts, ends = self.crow[index], self.crow[index + 1]
        lengths = ends - starts
        if keep is not None:
            lengths = lengths * keep
        crow = torch.zeros(len(index) + 1, dtype=torch.int64, device=self.device)
        torch.cumsum(lengths, 0, out=crow[1:])
        # Position of each output non-zero within its row, added to that row's start offset.
        row_of = torch.repeat_interleave(torch.arange(len(index), device=self.device), lengths)
        gather = starts[row_of] + torch.arange(int(crow[-1]), device=self.device) - crow[row_of]
        return csr_tensor(crow, self.col[gather], self.values[gather], (len(index), self.shape[1]))

    def range(self, start: int, stop: int) -> torch.Tensor:
        """Contiguous rows [start, stop) as a CSR batch (a view-like slice, no gather)."""
        a, b = int(self.crow[start]), int(self.crow[stop])
        return csr_tensor(self.crow[start:stop + 1] - a, self.col[a:b], self.values[a:b],
                           (stop - start, self.shape[1]))

    def chunks(self, size: int):
        for start in range(0, len(self), size):
            yield self.range(start, min(start + size, len(self)))

    def index_batches(self, generator: torch.Generator, batch_size: int, steps: int | None = None):
        """The row ids (on the device) of `steps` training batches (default: one pass) in one seeded random
        order of all rows; beyond one pass the order wraps around."""
        order = torch.randperm(len(self), generator=generator, device=generator.device)
        steps = steps if steps is not None else math.ceil(len(self) / batch_size)
        for step in range(steps):
            yield order[(step * batch_size) % len(self):][:batch_size].to(self.device)

    def batches(self, generator: torch.Generator, batch_size: int, steps: int | None = None):
        """The CSR batches of `index_batches`."""
        for index in self.index_batches(generator, batch_size, steps):
            yield self.rows(index)


def storage_device(matrix_bytes: int, device: torch.device) -> torch.device:
    """Keep a split on the compute device when it fits in half its free memory, else on the host."""
    if device.type != "cuda":
        return device
    free, _ = torch.cuda.mem_get_info(device)
    return device if matrix_bytes < free // 2 else torch.device("cpu")


def place(features: sp.csr_matrix, device: torch.device) -> DeviceCSR:
    """A CSR matrix (a split's features) as a DeviceCSR on `device`, or on the host if it does not fit there.

    A `Split` is still taken (its `.features`) for the benchmarks that pass one; nothing here imports the shard
    format."""
    x = getattr(features, "features", features)
    return DeviceCSR(x, storage_device(x.data.nbytes + x.indices.nbytes * 2 + x.indptr.nbytes * 2, device))
