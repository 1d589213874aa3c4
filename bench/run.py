"""Benchmark the training loop and Hamming search; every number is a ratio against a baseline measured
in the same run, on the same device.

Sections (--sections picks some):
  epochs   one epoch of our loop vs the authors' mechanics (bench/reference.py) at each batch
           size, on the given shards and on a seeded TMC-shaped synthetic corpus, with val precision
           after the same number of epochs
  step     a torch profiler table of one step at the first batch size (kernel launches vs device time)
  packing  1, 2, 4, 8 concurrent training processes on one device (the Tune --gpus-per-trial 0.25 case)
  search   Hamming top-100 over random codes: the torch GEMM path (and faiss, if asked) vs XOR-and-sort
  compile  that step with the forward under torch.compile variants, against the plain loop (last: the
           slowest to warm up, and the likeliest to fail)

Writes NAME.json and NAME.md to --out (default $OUT when set, else results/), after every section,
so a run stopped midway still leaves what it measured. bench/gpu.sh runs it on a GPU machine.

Example (CPU, small; from the repository root): python -m bench.run --data data/20ng --sections epochs --epochs 1

`python -m bench.run scale ...` is the other benchmark: how each stage's cost grows with the corpus
(synthetic corpora of N documents; preparation, training, search, serving; see `python -m bench.run scale --help`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.packing import packed_throughput
from bench.report import markdown
from bench.search import search_throughput
from bench.synthetic import TMC_FEATURES, TMC_NNZ_PER_ROW, TMC_TRAIN, TMC_VAL, tmc_shaped_corpus
from bench.training import COMPILE_MODES, compare_compile, compare_epochs, profile_step
from bench.options import CLI, JobParser, add_dataclass_args, dataclass_from_args
from corrhash.data import TfidfShards
from corrhash.device import resolve_device

SECTIONS = ("epochs", "step", "packing", "search", "compile")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class BenchOptions:
    data: Path
    """prepared 20ng shards (jobs/prepare_data.py)"""
    device: str = "auto"
    """auto, cpu or cuda"""
    sections: list[str] = field(default_factory=lambda: list(SECTIONS),
                                metadata={CLI: {"nargs": "+", "choices": SECTIONS}})
    """sections to run"""
    seed: int = 0
    """seed of the models, the synthetic corpus and the random codes"""
    bits: int = 64
    """code length of the trained models"""
    out: Path = field(default_factory=lambda: Path(os.environ.get("OUT") or "results"))
    """folder for NAME.json and NAME.md; $OUT when set"""
    name: str | None = None
    """file stem (default bench-gpu on CUDA, bench-cpu otherwise)"""
    deadline_s: float | None = None
    """start no section after this many seconds"""
    batch_sizes: list[int] = field(default_factory=lambda: [100, 500, 2000], metadata={CLI: {"nargs": "+"}})
    """epochs: the batch sizes compared"""
    epochs: int = 5
    """epochs: epochs per side before val precision"""
    synthetic_shape: list[int] = field(
        default_factory=lambda: [TMC_TRAIN, TMC_VAL, TMC_FEATURES, TMC_NNZ_PER_ROW],
        metadata={CLI: {"nargs": 4, "metavar": ("TRAIN", "VAL", "FEATURES", "NNZ")}})
    """epochs: the TMC-shaped corpus: train docs, val docs, terms, non-zeros per row (0 skips it)"""
    profile_steps: int = 50
    """step and compile: steps timed (and profiled) per variant"""
    compile_modes: list[str] = field(default_factory=lambda: ["default", "reduce-overhead"], metadata={
        CLI: {"nargs": "+", "choices": sorted(set(COMPILE_MODES) - {"off"})}})
    """compile: torch.compile variants measured against off"""
    compile_warmup_steps: int = 30
    """compile: steps to compile and settle recompiles"""
    processes: list[int] = field(default_factory=lambda: [1, 2, 4, 8], metadata={CLI: {"nargs": "+"}})
    """packing: concurrent training processes"""
    packing_epochs: int = 3
    """packing: epochs each process trains"""
    db_sizes: list[int] = field(default_factory=lambda: [1_000_000, 10_000_000], metadata={CLI: {"nargs": "+"}})
    """search: codes in the database"""
    search_bits: list[int] = field(default_factory=lambda: [64, 128], metadata={CLI: {"nargs": "+"}})
    """search: code lengths"""
    queries: int = 1000
    """search: queries per measurement"""
    search_backends: list[str] = field(default_factory=lambda: ["torch"], metadata={
        CLI: {"nargs": "+", "choices": ("torch", "faiss")}})
    """search: backends (faiss needs faiss installed, CPU machines only)"""
    reference_queries: int = 100
    """search: queries for the XOR-and-sort baseline"""
    reference_db: int = 100_000
    """search: codes the XOR-and-sort baseline scans"""


SCALE_SECTIONS = ("prepare", "train", "stream", "search", "serve")


@dataclass
class ScaleOptions:
    sizes: list[int] = field(default_factory=lambda: [10_000, 100_000, 1_000_000], metadata={CLI: {"nargs": "+"}})
    """prepare, train: corpus sizes N (documents), smallest first"""
    code_sizes: list[int] = field(default_factory=lambda: [1_000_000, 10_000_000], metadata={CLI: {"nargs": "+"}})
    """search: 64-bit codes in the database"""
    sections: list[str] = field(default_factory=lambda: list(SCALE_SECTIONS),
                                metadata={CLI: {"nargs": "+", "choices": SCALE_SECTIONS}})
    """sections to run (train, stream and serve use the prepare section's corpora)"""
    workdir: Path = Path("runs/scale")
    """where the synthetic corpora and their preparations go (large: about 1 GiB per million documents)"""
    files: int = 8
    """prepare: input files per corpus (Ray tasks read them in parallel)"""
    ray: bool = True
    """prepare: also prepare as Ray tasks (an embedded local Ray) and compare"""
    search_model_n: int = 0
    """search: also the codes of a CorrSH model trained on the prepared corpus of this N (0: none)"""
    search_model_epochs: int = 3
    """search: epochs that model trains"""
    stream_buffer: int = 50_000
    """stream: train rows a streamed epoch shuffles together"""
    serve_requests: int = 2000
    """serve: requests of the bounded load test"""
    serve_concurrency: int = 8
    """serve: requests in flight"""
    serve_duration_s: float = 120.0
    """serve: the load test's time cap"""
    seed: int = 0
    """seed of the corpora, the models and the random codes"""
    out: Path = field(default_factory=lambda: Path(os.environ.get("OUT") or "results"))
    """folder for NAME.json and NAME.md; $OUT when set"""
    name: str = "scale"
    """file stem"""


def scale_main(argv) -> int:
    from bench import scale
    from bench.prepare_scale import run_prepare_scale
    from bench.sublinear import run_model_codes, run_search_scale

    parser = argparse.ArgumentParser(prog="python -m bench.run scale", description=scale.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(parser, ScaleOptions, "scale benchmark")
    args = dataclass_from_args(ScaleOptions, parser.parse_args(argv))
    sizes = sorted(args.sizes)
    report = {"host": platform.node(), "cpus": os.cpu_count(), "torch": torch.__version__,
              "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": " ".join(["python -m bench.run", "scale", *(sys.argv[2:] if argv is None else argv)]),
              "prepare": [], "train": [], "stream": None, "search": [], "serve": None, "section_seconds": {}, "errors": {}}
    log(f"scale benchmark: N = {sizes}, writing {args.out}/{args.name}.{{json,md}}")

    def prepared(n: int) -> Path:
        return args.workdir / f"prepared-{n}-single"

    def prepare():
        report["prepare"] = run_prepare_scale(sizes, args.workdir, args.seed, args.files, args.ray)
        for row in report["prepare"]:
            row["seconds"] = row["prepare_s"] or row["wall_s"]  # the job's own timing, else the process's
        for mode in ("single", "ray"):
            scale.per_document_ratios(report["prepare"], "n_docs", "seconds", mode)

    def train():
        report["train"] = [scale.train_row(prepared(n), n, seed=args.seed, log=log) for n in sizes]
        scale.per_document_ratios(report["train"], "train_docs", "epoch_s")

    def stream():
        from bench.streaming import run_stream_scale

        report["stream"] = run_stream_scale({n: prepared(n) for n in sizes}, args.stream_buffer, args.seed, log=log)

    def search():
        report["search"] = run_search_scale(args.code_sizes, args.seed, log=log)
        if args.search_model_n:
            report["search"] += run_model_codes(prepared(args.search_model_n), args.search_model_epochs, args.seed,
                                                log=log)

    def serve():
        raw = sorted((args.workdir / f"synth-{sizes[0]}").glob("part-*.jsonl"))[0]
        texts = [json.loads(line)["text"] for line, _ in zip(raw.open(), range(500))]
        report["serve"] = scale.serve_row(prepared(sizes[0]), texts, args.workdir, args.serve_requests,
                                          args.serve_concurrency, args.serve_duration_s, log=log)

    measures = {"prepare": prepare, "train": train, "stream": stream, "search": search, "serve": serve}
    for section in SCALE_SECTIONS:
        if section not in args.sections:
            continue
        log(f"{section} ...")
        started = time.perf_counter()
        try:
            measures[section]()
        except Exception as exc:  # noqa: BLE001 - one broken section must not cost the others' numbers
            report["errors"][section] = f"{type(exc).__name__}: {exc}"
            log(f"{section}: failed\n{traceback.format_exc()}")
        report["section_seconds"][section] = time.perf_counter() - started
        scale.write(report, args.out, args.name)  # after every section: a stopped run keeps what it measured
    print(scale.markdown(report))
    return 1 if report["errors"] else 0


def parse_args(argv=None) -> BenchOptions:
    parser = JobParser(__doc__, prog="python -m bench.run")
    add_dataclass_args(parser, BenchOptions, "benchmark")
    return dataclass_from_args(BenchOptions, parser.parse_args(argv))


def main(argv=None) -> int:
    rest = sys.argv[1:] if argv is None else list(argv)
    if rest[:1] == ["scale"]:
        return scale_main(rest[1:])
    args = parse_args(argv)
    device = resolve_device(args.device)
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"cpu ({torch.get_num_threads()} threads)"
    name = args.name or ("bench-gpu" if device.type == "cuda" else "bench-cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"device": device_name, "torch": torch.__version__, "python": platform.python_version(),
              "host": platform.node(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": " ".join(["python -m bench.run"] + sys.argv[1:]), "sections": args.sections,
              "epochs": [], "step_profile": None, "compile": [], "packing": [], "search": [],
              "search_backends": args.search_backends, "section_seconds": {}, "skipped": [], "errors": {}}
    log(f"benchmark on {device_name}, torch {torch.__version__}, writing {args.out}/{name}.{{json,md}}")

    shards = TfidfShards(args.data)
    dataset = shards.manifest.get("dataset", args.data.name)

    def epochs():
        corpora = [(dataset, shards.split("train"), shards.split("val"))]
        n_train, n_val, n_features, nnz = args.synthetic_shape
        if n_train:
            corpora.append(("tmc-shaped synthetic", *tmc_shaped_corpus(args.seed, n_train, n_val, n_features, nnz)))
        for corpus, train, val in corpora:
            report["epochs"] += compare_epochs(corpus, train, val, args.batch_sizes, args.epochs, args.bits, device,
                                               args.seed, log)

    def step():
        report["step_profile"] = profile_step(shards.split("train"), args.batch_sizes[0], args.bits, device,
                                              args.seed, args.profile_steps)
        log(f"  step: {report['step_profile']['step_ms']:.3f} ms, device busy "
            f"{100 * report['step_profile']['device_busy_fraction']:.0f}%")

    def packing():
        report["packing"] = packed_throughput(args.data, args.processes, str(device), args.packing_epochs,
                                              args.batch_sizes[0], args.bits, args.seed, log)

    def search():
        report["search"] = search_throughput(args.db_sizes, args.search_bits, args.queries, args.search_backends,
                                             args.reference_queries, args.reference_db, device, args.seed, log)

    def compile_step():
        report["compile"] = compare_compile(shards.split("train"), args.batch_sizes[0], args.bits, device, args.seed,
                                            args.compile_modes, args.compile_warmup_steps, args.profile_steps, log)

    run_start = time.perf_counter()
    sections = {"epochs": epochs, "step": step, "packing": packing, "search": search, "compile": compile_step}
    for section, measure in sections.items():  # in this order: compile, the riskiest, last
        if section not in args.sections:
            continue
        if args.deadline_s and time.perf_counter() - run_start > args.deadline_s:
            report["skipped"].append(section)
            log(f"{section}: skipped, past --deadline-s {args.deadline_s}")
            continue
        log(f"{section} ...")
        started = time.perf_counter()
        try:
            measure()
        except Exception as exc:  # noqa: BLE001 - on a lent machine, one broken section must not cost the rest
            report["errors"][section] = f"{type(exc).__name__}: {exc}"
            log(f"{section}: failed\n{traceback.format_exc()}")
        report["section_seconds"][section] = time.perf_counter() - started
        if device.type == "cuda":
            report["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        # Written after every section: a run stopped by a time limit keeps what it measured.
        (args.out / f"{name}.json").write_text(json.dumps(report, indent=2))
        (args.out / f"{name}.md").write_text(markdown(report))

    print(markdown(report))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
