"""Splits too large for memory: read from their shard files a few at a time instead of whole.

`open_split` decides, per split, how it is held:
- whole (`Split`): the fast path. Training puts one copy on the device and gathers batches there.
- streamed (`ShardStream`): each training epoch visits the shard files in a seeded random order. It
  holds whole files until it has at least `buffer_rows` rows, shuffles the rows within that buffer,
  and cuts batches from it, as tf.data's or WebDataset's shuffle buffers do. The next files are read
  in a background thread while the current buffer trains. Evaluation reads the files in order, one
  at a time.
Memory is then bounded by two buffers (the one training, the one being read), not by the corpus.
The price: rows mix only within a buffer, and every file is read and checked again each epoch and
each evaluation. Shards written by `prepare_data` keep the corpus order, so a buffer that spans few
files sees few topics: make `buffer_rows` several times a shard's rows.
"""

from __future__ import annotations

import math
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import scipy.sparse as sp
import torch

from corrhash.data.device_csr import DeviceCSR, place
from corrhash.data.shards import Location, Split, TfidfShards
from corrhash.errors import ConfigError, DataError
from corrhash.log import log

STREAM_MODES = ("auto", "always", "never")
BYTES_PER_NONZERO = 24
"""Host bytes one feature value costs in a split held whole: 8 in its CSR matrix, 12 in the int64/float32 copy
training gathers batches from, and headroom for the copy made while the shards are stacked."""


class ShardStream:
    """A split (or the given shard files of it) read from disk or a URI a few files at a time."""

    def __init__(self, shards: TfidfShards, name: str, paths: list[Location] | None = None,
                 buffer_rows: int = 50_000):
        if buffer_rows < 1:
            raise ConfigError(f"stream buffer_rows={buffer_rows}: must be >= 1")
        self.shards, self.name, self.buffer_rows = shards, name, buffer_rows
        self.paths = shards.files(name, paths)
        self.sizes = [shards.rows_in(path) for path in self.paths]
        self.n_features = shards.n_features
        self.most_rows_held = 0
        """The most rows one training buffer held so far (the memory bound, checked by the tests)."""
        self._labels: np.ndarray | None = None
        self._first_ids: dict[str, int] | None = None

    def __len__(self) -> int:
        return sum(self.sizes)

    @property
    def labels(self) -> np.ndarray:
        """The split's label matrix (the labels column alone is read: a bool per document and label)."""
        if self._labels is None:
            self._labels = self.shards.labels(self.name, self.paths)
        return self._labels

    def _features(self, path: Location) -> sp.csr_matrix:
        return self.shards.shard_rows(path)[1]

    def sample(self, count: int, seed: int) -> Split:
        """The documents `Split.sample` would choose from this split held whole, read one file at a time."""
        if count >= len(self):
            count = len(self)
        rows = np.sort(np.random.default_rng(seed).choice(len(self), size=count, replace=False))
        starts = np.cumsum([0, *self.sizes])
        parts = []
        for i, path in enumerate(self.paths):
            mine = rows[(rows >= starts[i]) & (rows < starts[i + 1])] - starts[i]
            if len(mine):
                ids, features, labels = self.shards.shard_rows(path)
                parts.append((ids[mine], features[mine], labels[mine]))
        return self.shards.stack(self.name, parts)

    def chunks(self, size: int) -> Iterator[torch.Tensor]:
        """Every row in split order as CSR batches of at most `size` rows on the host (evaluation)."""
        for features in _prefetched(self.paths, self._features):
            yield from DeviceCSR(features, torch.device("cpu")).chunks(size)

    def batches(self, generator: torch.Generator, batch_size: int, steps: int | None = None) -> Iterator[torch.Tensor]:
        """`steps` shuffled training batches (default: one pass, the last batch short), on the generator's device.

        With `steps` beyond one pass (distributed ranks with unequal shares), a new pass in a new file order starts
        where the last one ended; the rows a buffer leaves over (fewer than a batch) move on to the next buffer."""
        for batch, _ in self.id_batches(generator, batch_size, steps):
            yield batch

    def id_batches(self, generator: torch.Generator, batch_size: int, steps: int | None = None
                   ) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        """`batches`, each with its rows' positions in the whole split (int64, on the host): what a model that
        pairs documents with graph neighbours looks them up by."""
        if len(self) == 0:
            raise DataError(f"{self.shards.root}: the {self.name} shards to stream hold no documents")
        total = steps if steps is not None else math.ceil(len(self) / batch_size)
        device, emitted, carry, carry_ids = generator.device, 0, None, None
        while emitted < total:
            order = torch.randperm(len(self.paths), generator=generator, device=device).tolist()
            for group in _prefetched(self._groups([self.paths[i] for i in order]), self._read_group_ids):
                buffer, ids = group
                if carry is not None:
                    buffer, ids = sp.vstack([carry, buffer], format="csr"), np.concatenate([carry_ids, ids])
                self.most_rows_held = max(self.most_rows_held, buffer.shape[0])
                rows = DeviceCSR(buffer, device)
                permutation = torch.randperm(len(rows), generator=generator, device=device)
                full = len(rows) // batch_size
                for b in range(min(full, total - emitted)):
                    index = permutation[b * batch_size:(b + 1) * batch_size]
                    yield rows.rows(index), ids[index.cpu().numpy()]
                    emitted += 1
                if emitted == total:
                    return
                rest = permutation[full * batch_size:].cpu().numpy()
                carry, carry_ids = (buffer[rest], ids[rest]) if len(rest) else (None, None)
            if carry is not None and steps is None:  # one pass: the rows left over make the last, short batch
                yield DeviceCSR(carry, device).range(0, carry.shape[0]), carry_ids
                emitted, carry, carry_ids = emitted + 1, None, None

    def first_ids(self) -> dict[str, int]:
        """{shard file: the position of its first row in the whole split} (this stream may hold a share of it)."""
        files = self.shards.files(self.name)
        starts = np.cumsum([0, *(self.shards.rows_in(path) for path in files)])
        return {str(path): int(start) for path, start in zip(files, starts)}

    def _groups(self, paths: list[Location]) -> Iterator[list[Location]]:
        """Consecutive files, whole, until each group holds at least `buffer_rows` rows."""
        group, rows = [], 0
        for path in paths:
            group.append(path)
            rows += self.shards.rows_in(path)
            if rows >= self.buffer_rows:
                yield group
                group, rows = [], 0
        if group:
            yield group

    def _read_group_ids(self, paths: list[Location]) -> tuple[sp.csr_matrix, np.ndarray]:
        if self._first_ids is None:
            self._first_ids = self.first_ids()
        ids = [np.arange(self._first_ids[str(p)], self._first_ids[str(p)] + self.shards.rows_in(p)) for p in paths]
        return sp.vstack([self._features(path) for path in paths], format="csr"), np.concatenate(ids)


def _prefetched(items: Iterable, load: Callable, ahead: int = 1) -> Iterator:
    """`load(item)` for each item in order, the next `ahead` loading in a thread while the caller uses this one
    (Parquet decoding and the sha256 check release the GIL). A failed load raises where its result is taken."""
    items = iter(items)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="corrhash-shards") as pool:
        pending = deque(pool.submit(load, item) for item in _take(items, ahead + 1))
        while pending:
            result = pending.popleft().result()
            for item in _take(items, 1):
                pending.append(pool.submit(load, item))
            yield result


def _take(items: Iterator, count: int) -> list:
    return [item for _, item in zip(range(count), items)]


def estimated_bytes(shards: TfidfShards, name: str, paths: list[Location] | None = None) -> int:
    """Host memory a split takes held whole: the non-zeros of its first file (counted in the Parquet footer),
    scaled by the rows the manifest lists for all of them, at `BYTES_PER_NONZERO` each."""
    files = shards.files(name, paths)
    rows = [shards.rows_in(path) for path in files]
    first = next((i for i, n in enumerate(rows) if n), None)
    if first is None:
        return 0
    return int(shards.nonzeros_in(files[first]) / rows[first] * sum(rows) * BYTES_PER_NONZERO)


def available_host_bytes() -> int | None:
    """Memory this process may still take: MemAvailable, or what its cgroup's limit leaves when lower (a container,
    a Ray worker or a systemd unit with a memory limit); None where neither can be read (not Linux)."""
    found = []
    try:
        with open("/proc/meminfo") as meminfo:
            found += [int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:")]
    except (OSError, ValueError):
        pass
    for limit, usage in _cgroup_memory_files():
        try:
            cap = limit.read_text().strip()
            if cap != "max" and int(cap) < 1 << 60:  # cgroup v1 writes "no limit" as a huge number
                found.append(int(cap) - int(usage.read_text()))
        except (OSError, ValueError):
            pass
    return min(found) if found else None


def _cgroup_memory_files() -> list[tuple[Path, Path]]:
    """(limit, usage) files of this process's own memory cgroup, v2 and v1, where they can be found: a container
    may mount its cgroup as the root while /proc/self/cgroup names the host's path, so the root is the fallback."""
    pairs = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return pairs
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base, files = Path("/sys/fs/cgroup"), ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):
            base, files = Path("/sys/fs/cgroup/memory"), ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        own = base / path.lstrip("/")
        folder = own if (own / files[0]).is_file() else base
        if (folder / files[0]).is_file():
            pairs.append((folder / files[0], folder / files[1]))
    return pairs


def open_split(shards: TfidfShards, name: str, mode: str = "auto", buffer_rows: int = 50_000,
               paths: list[Location] | None = None) -> Split | ShardStream:
    """A split held whole or streamed: `always`, `never`, or `auto`, which streams only a split estimated to
    need more than half the memory still available (logged, with the figures, when it does)."""
    if mode not in STREAM_MODES:
        raise ConfigError(f"stream={mode!r}: use one of {', '.join(STREAM_MODES)}")
    stream = mode == "always"
    if mode == "auto":
        needed, available = estimated_bytes(shards, name, paths), available_host_bytes()
        stream = available is not None and needed > available // 2
        if stream:
            log(f"{shards.root}: the {name} split needs about {needed / 2**30:.1f} GiB held whole, more than half the "
                f"{available / 2**30:.1f} GiB available: streaming it from its shard files, {buffer_rows} rows at a time")
    if stream:
        return ShardStream(shards, name, paths, buffer_rows)
    return shards.split(name, paths)


def rows_of(data: Split | ShardStream, device: torch.device) -> DeviceCSR | ShardStream:
    """What the epoch loop and the evaluator iterate: a held split placed on `device`, or the stream itself."""
    return data if isinstance(data, ShardStream) else place(data.features, device)

