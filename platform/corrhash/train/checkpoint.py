"""The checkpoint format: one writer (`save`) and its readers (`restore` to resume, `best_model`, `read`).

A checkpoint folder holds `state.pt`, the rank-0 `TrainState.state_dict()` (model, optimizer,
scheduler, annealing buffers, best weights, history; loadable with `torch.load(weights_only=True)`),
and one `generator-<rank>.pt` per worker, so that every rank resumes its own random stream.

When the checkpoint's epoch is the best one so far, its model weights *are* the best weights, and
the second copy is left out (a quarter of a CorrSH checkpoint: model + 2 Adam moments + best).
"""

from __future__ import annotations

from pathlib import Path

import torch

from corrhash.models import HashModel, ModelConfig, create_model
from corrhash.train.loop import TrainState

STATE_FILE = "state.pt"


def generator_file(rank: int) -> str:
    return f"generator-{rank}.pt"


def save(directory: Path, state: TrainState, rank: int = 0) -> None:
    """Write this rank's part of a checkpoint into `directory` (rank 0 writes the state)."""
    directory = Path(directory)
    if rank == 0:
        payload = state.state_dict()
        if state.best_epoch == state.epoch:
            payload["best_weights"] = {}  # the model weights are the best ones
        torch.save(payload, directory / STATE_FILE)
    torch.save(state.generator.get_state(), directory / generator_file(rank))


def read(directory: Path, device: torch.device | str = "cpu") -> dict:
    """The rank-0 state of a checkpoint, best weights filled in."""
    payload = torch.load(Path(directory) / STATE_FILE, map_location=device, weights_only=True)
    if not payload["best_weights"] and payload["best_epoch"] == payload["epoch"]:
        payload["best_weights"] = {k: v.detach().cpu().clone() for k, v in payload["model"].items()}
    return payload


def restore(directory: Path, state: TrainState, rank: int, device: torch.device) -> None:
    """Load a checkpoint into `state` (built by `new_state` on `device`) to continue bit-exactly."""
    state.load_state_dict(read(directory, device))
    own = Path(directory) / generator_file(rank)
    if own.is_file():
        state.generator.set_state(torch.load(own, weights_only=True))


def best_model(directory: Path, model_config: ModelConfig, n_features: int) -> tuple[HashModel, dict]:
    """The checkpoint's best weights as a model on the CPU, and the whole payload."""
    payload = read(directory, "cpu")
    model = create_model(model_config, n_features)
    model.load_state_dict(payload["best_weights"])
    return model, payload
