"""Ranks with unequal shares of the train split (3 shard files on 2 workers) train as one worker would: each rank's
batch is its share's part of the global batch, and DDP's all-reduce weights each rank's gradient by its batch, so
one step of two gloo ranks gives exactly the gradient of one worker's mean loss over both batches."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from corrhash.runs.worker import rank_batches, share_weighted_mean
from services import free_port

ROWS = torch.randn(21, 5, generator=torch.Generator().manual_seed(0))  # 14 rows on rank 0, 7 on rank 1


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))


def loss(net: torch.nn.Module, rows: torch.Tensor) -> torch.Tensor:
    return net(rows).pow(2).mean()  # a mean over the batch, as every model's loss is


def ddp_step(rank: int, world: int, port: int, batches: list[int], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(model())
        ddp.register_comm_hook(None, share_weighted_mean(batches[rank] / sum(batches)))
        start = sum(batches[:rank])
        loss(ddp, ROWS[start:start + batches[rank]]).backward()
        if rank == 0:
            torch.save([p.grad for p in ddp.module.parameters()], out)
    finally:
        dist.destroy_process_group()


def test_rank_batches_split_the_global_batch_by_share():
    assert rank_batches(20, [1500]) == [20]  # one worker: the batch asked for
    assert rank_batches(20, [750, 750]) == [10, 10]  # equal shares: ceil(batch / world), as before
    assert rank_batches(20, [1000, 500]) == [14, 7]
    steps = [math.ceil(rows / batch) for rows, batch in zip([1000, 500], [14, 7])]
    assert steps == [72, 72]  # one worker over 1500 rows: 75; equal batches of 10 took 100 and saw rank 1's twice
    assert rank_batches(3, [1000, 1]) == [3, 1]  # never an empty batch


@pytest.mark.slow  # two spawned processes importing torch and corrhash: ~16 s on 2 busy cores
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_unequal_ranks_take_one_workers_gradient(tmp_path):
    batches = [14, 7]
    out = tmp_path / "grads.pt"
    mp.spawn(ddp_step, args=(2, free_port(), batches, str(out)), nprocs=2, join=True)
    reduced = torch.load(out, weights_only=True)
    one_worker = model()
    loss(one_worker, ROWS).backward()
    for got, expected in zip(reduced, (p.grad for p in one_worker.parameters())):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    plain_mean = model()  # what DDP's default mean gives: each rank's rows weighted 1/2, not by count
    ((loss(plain_mean, ROWS[:14]) + loss(plain_mean, ROWS[14:])) / 2).backward()
    assert not torch.allclose(reduced[0], next(plain_mean.parameters()).grad, rtol=1e-3)
