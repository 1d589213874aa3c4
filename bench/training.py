"""Training-side measurements: our epoch loop against the reference mechanics, where one step's
time goes (torch profiler), and the step with torch.compile variants.

Our side always calls the shared loop (`corrhash.train.loop.train_epochs`, `run_epoch`); nothing here copies it.
Both sides start from the same seeded weights and are scored by the same validation metric (our
precision@100, tie-aware), so a speed-up cannot hide a loss of quality.
"""

from __future__ import annotations

import torch
from torch.utils.data import Subset

from bench.reference import (DenseRows, reference_codes, reference_epoch, reference_loader,
                                      reference_precision, reference_topk)
from bench.timing import timed
from corrhash.data.device_csr import DeviceCSR, place
from corrhash.data.shards import Split
from corrhash.models import ModelConfig, create_model
from corrhash.retrieval import precision_at_k
from corrhash.train import Evaluator, TrainConfig, new_state
from corrhash.train.loop import run_epoch, train_epochs

WARMUP_BATCHES = 3
KERNEL_LAUNCHES = {"cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx"}


def val_precision(evaluator: Evaluator, model) -> float:
    """Tie-aware val precision@k with the torch search (the GPU path; identical results to faiss)."""
    database, queries = evaluator.codes(model)
    return precision_at_k(queries, evaluator.queries.labels, database, evaluator.database.labels,
                          k=evaluator.k, backend="torch").tie_aware


def train_ours(model_config: ModelConfig, rows: DeviceCSR, n_features: int, batch_size: int, epochs: int,
               device: torch.device, seed: int, forward=None) -> tuple[list[float], torch.nn.Module]:
    """Seconds per epoch of the shared loop, and the trained model (annealed after each epoch as fit does)."""
    config = TrainConfig(batch_size=batch_size, seed=seed, device=str(device))
    warm = new_state(model_config, config, n_features, device)  # throwaway: kernels, allocator
    run_epoch(warm.model, warm, rows, batch_size, device, batches=WARMUP_BATCHES)
    state = new_state(model_config, config, n_features, device)
    seconds = [metrics["seconds"] for metrics in train_epochs(state.model, state, rows, batch_size, device, epochs)]
    return seconds, state.model


def _reference_state(model_config: ModelConfig, n_features: int, device: torch.device, seed: int):
    config = TrainConfig(seed=seed)
    torch.manual_seed(seed)  # the same initial weights as new_state gives ours
    model = create_model(model_config, n_features).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)  # plain Adam, as the authors'
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, config.lr_decay_steps, config.lr_decay)
    return model, optimizer, scheduler


def train_reference(model_config: ModelConfig, rows: DenseRows, n_features: int, batch_size: int, epochs: int,
                    device: torch.device, seed: int) -> tuple[list[float], torch.nn.Module]:
    warm_rows = Subset(rows, range(min(len(rows), WARMUP_BATCHES * batch_size)))
    reference_epoch(*_reference_state(model_config, n_features, device, seed),
                    reference_loader(warm_rows, batch_size, shuffle=True, seed=seed), device)
    model, optimizer, scheduler = _reference_state(model_config, n_features, device, seed)
    loader = reference_loader(rows, batch_size, shuffle=True, seed=seed)
    seconds = []
    for _ in range(epochs):
        elapsed, _ = timed(lambda: reference_epoch(model, optimizer, scheduler, loader, device))
        model.end_epoch()
        seconds.append(elapsed)
    return seconds, model


def reference_evaluation(model, train_rows: DenseRows, val_rows: DenseRows, train: Split, val: Split,
                         device: torch.device) -> float:
    """The authors' evaluation: codes batch by batch, then XOR-and-sort over 100-code blocks."""
    database = reference_codes(model, reference_loader(train_rows, 100, shuffle=False), device)
    queries = reference_codes(model, reference_loader(val_rows, 100, shuffle=False), device)
    return reference_precision(reference_topk(queries, database, 100), val.labels, train.labels)


def compare_epochs(dataset: str, train: Split, val: Split, batch_sizes: list[int], epochs: int, bits: int,
                   device: torch.device, seed: int, log=print) -> list[dict]:
    """One row per batch size: mean epoch seconds and val precision after `epochs`, ours vs reference."""
    model_config = ModelConfig(name="corrsh", bits=bits)
    n_features = train.features.shape[1]
    resident = place(train, device)
    evaluator = Evaluator(train, val, device)
    train_dense, val_dense = DenseRows(train.features), DenseRows(val.features)
    rows = []
    for batch_size in batch_sizes:
        ours, ours_model = train_ours(model_config, resident, n_features, batch_size, epochs, device, seed)
        reference, reference_model = train_reference(model_config, train_dense, n_features, batch_size, epochs,
                                                     device, seed)
        reference_quality = val_precision(evaluator, reference_model)  # also warms the evaluation up
        ours_eval, ours_quality = timed(lambda: val_precision(evaluator, ours_model))
        reference_eval, _ = timed(lambda: reference_evaluation(ours_model, train_dense, val_dense, train, val,
                                                               device))
        ours_epoch, reference_epoch_s = sum(ours) / epochs, sum(reference) / epochs
        rows.append({
            "dataset": dataset, "bits": bits, "batch_size": batch_size, "docs": len(train),
            "nnz_per_row": train.features.nnz / len(train), "epochs": epochs,
            "ours_epoch_s": ours_epoch, "reference_epoch_s": reference_epoch_s,
            "epoch_speedup": reference_epoch_s / ours_epoch, "ours_docs_per_s": len(train) / ours_epoch,
            "ours_val_precision": ours_quality, "reference_val_precision": reference_quality,
            "ours_eval_s": ours_eval, "reference_eval_s": reference_eval, "eval_speedup": reference_eval / ours_eval,
        })
        log(f"  {dataset} batch {batch_size}: ours {ours_epoch:.3f}s/epoch, reference {reference_epoch_s:.3f}s/epoch, "
            f"val p@100 {ours_quality:.4f} vs {reference_quality:.4f}")
    return rows


def profile_step(train: Split, batch_size: int, bits: int, device: torch.device, seed: int, steps: int,
                 row_limit: int = 15) -> dict:
    """Where a step goes: wall time per step (unprofiled) against the GPU's busy time and kernel count."""
    model_config = ModelConfig(name="corrsh", bits=bits)
    state = new_state(model_config, TrainConfig(batch_size=batch_size, seed=seed, device=str(device)),
                      train.features.shape[1], device)
    rows = place(train, device)
    run_epoch(state.model, state, rows, batch_size, device, batches=steps)  # warm-up
    wall, _ = timed(lambda: run_epoch(state.model, state, rows, batch_size, device, batches=steps))
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        timed(lambda: run_epoch(state.model, state, rows, batch_size, device, batches=steps))
    # Device-side events (kernels, copies, memsets) carry the GPU's own time; CPU ops only launch them.
    device_events = [e for e in profiler.events() if e.device_type != torch.autograd.DeviceType.CPU]
    averages = profiler.key_averages()
    launches = sum(e.count for e in averages if e.key in KERNEL_LAUNCHES)
    device_ms = sum(e.self_device_time_total for e in device_events) / 1e3
    step_ms = wall / steps * 1e3
    busy = device_ms / steps / step_ms
    sort_by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return {
        "batch_size": batch_size, "steps": steps, "step_ms": step_ms,
        "kernel_launches_per_step": launches / steps, "device_events_per_step": len(device_events) / steps,
        "device_busy_ms_per_step": device_ms / steps, "device_busy_fraction": busy,
        # The GPU idles between small kernels while Python and the launch queue catch up. Without
        # device events (CPU, or a profiler that recorded none) there is nothing to judge by.
        "launch_bound": busy < 0.5 if device_events else None,
        "table": averages.table(sort_by=sort_by, row_limit=row_limit),
    }


COMPILE_MODES = {
    "off": None,
    "eager": {"backend": "eager"},  # Dynamo tracing only: what compile costs before any code generation
    "default": {},
    "reduce-overhead": {"mode": "reduce-overhead"},  # inductor + CUDA graphs
}


def compare_compile(train: Split, batch_size: int, bits: int, device: torch.device, seed: int, modes: list[str],
                    warmup_steps: int, steps: int, log=print) -> list[dict]:
    """Step time with the model's forward under torch.compile variants, against "off" from this run.

    Batches are sparse with a varying number of non-zeros, so compiled graphs see dynamic shapes;
    the warm-up runs enough steps for the recompilations to settle. A variant that fails is reported
    with its error rather than stopping the benchmark."""
    model_config = ModelConfig(name="corrsh", bits=bits)
    rows = place(train, device)
    results, baseline_ms = [], None
    for mode in ["off"] + [m for m in modes if m != "off"]:
        torch.compiler.reset()
        state = new_state(model_config, TrainConfig(batch_size=batch_size, seed=seed, device=str(device)),
                          train.features.shape[1], device)
        options = COMPILE_MODES[mode]
        row = {"mode": mode}
        try:
            forward = state.model if options is None else torch.compile(state.model, **options)
            warmup, _ = timed(lambda: run_epoch(forward, state, rows, batch_size, device, batches=warmup_steps))
            elapsed, _ = timed(lambda: run_epoch(forward, state, rows, batch_size, device, batches=steps))
        except Exception as exc:  # noqa: BLE001 - a failing variant is a result, not a crash
            if options is None:
                raise  # the plain loop itself failed: nothing to compare against
            row["error"] = f"{type(exc).__name__}: {exc}"[:400]
            log(f"  compile {mode}: failed ({row['error'][:120]})")
            results.append(row)
            continue
        step_ms = elapsed / steps * 1e3
        baseline_ms = step_ms if mode == "off" else baseline_ms
        row.update(warmup_s=warmup, step_ms=step_ms, speedup=baseline_ms / step_ms)  # "off" runs first
        log(f"  compile {mode}: {step_ms:.3f} ms/step (warm-up {warmup:.1f}s)")
        results.append(row)
    torch.compiler.reset()
    return results
