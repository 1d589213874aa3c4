"""Benchmark the training loop and Hamming search; every number is a ratio against a baseline measured
in the same run, on the same device.

Sections (--sections picks some):
  epochs   one epoch of our loop vs the authors' mechanics (corrhash/bench/reference.py) at each batch
           size, on the given shards and on a seeded TMC-shaped synthetic corpus, with val precision
           after the same number of epochs
  step     a torch profiler table of one step at the first batch size (kernel launches vs device time)
  packing  1, 2, 4, 8 concurrent training processes on one device (the Tune --gpus-per-trial 0.25 case)
  search   Hamming top-100 over random codes: the torch GEMM path (and faiss, if asked) vs XOR-and-sort
  compile  that step with the forward under torch.compile variants, against the plain loop (last: the
           slowest to warm up, and the likeliest to fail)

Writes NAME.json and NAME.md to --out (default $OUT when set, else results/), after every section,
so a run stopped midway still leaves what it measured. bench/gpu.sh runs it on a GPU machine.

Example (CPU, small): python jobs/bench.py --data data/20ng --sections epochs --epochs 1
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # run from a checkout too

import torch  # noqa: E402

from corrhash.bench.packing import packed_throughput  # noqa: E402
from corrhash.bench.report import markdown  # noqa: E402
from corrhash.bench.search import search_throughput  # noqa: E402
from corrhash.bench.synthetic import TMC_FEATURES, TMC_NNZ_PER_ROW, TMC_TRAIN, TMC_VAL, tmc_shaped_corpus  # noqa: E402
from corrhash.bench.training import COMPILE_MODES, compare_compile, compare_epochs, profile_step  # noqa: E402
from corrhash.data import TfidfShards  # noqa: E402
from corrhash.train import resolve_device  # noqa: E402

SECTIONS = ("epochs", "step", "packing", "search", "compile")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="prepared 20ng shards (jobs/prepare_data.py)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bits", type=int, default=64, help="code length of the trained models")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "results"),
                        help="folder for NAME.json and NAME.md (default $OUT, else results/)")
    parser.add_argument("--name", help="file stem (default bench-gpu on CUDA, bench-cpu otherwise)")
    epochs = parser.add_argument_group("epochs")
    epochs.add_argument("--batch-sizes", type=int, nargs="+", default=[100, 500, 2000])
    epochs.add_argument("--epochs", type=int, default=5, help="epochs per side before val precision")
    epochs.add_argument("--synthetic-shape", type=int, nargs=4, metavar=("TRAIN", "VAL", "FEATURES", "NNZ"),
                        default=[TMC_TRAIN, TMC_VAL, TMC_FEATURES, TMC_NNZ_PER_ROW],
                        help="the TMC-shaped corpus: train docs, val docs, terms, non-zeros per row (0 skips it)")
    parser.add_argument("--deadline-s", type=float, help="start no section after this many seconds")
    step = parser.add_argument_group("step and compile")
    step.add_argument("--profile-steps", type=int, default=50, help="steps timed (and profiled) per variant")
    step.add_argument("--compile-modes", nargs="+", choices=sorted(set(COMPILE_MODES) - {"off"}),
                      default=["default", "reduce-overhead"], help="torch.compile variants measured against off")
    step.add_argument("--compile-warmup-steps", type=int, default=30, help="steps to compile and settle recompiles")
    packing = parser.add_argument_group("packing")
    packing.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4, 8])
    packing.add_argument("--packing-epochs", type=int, default=3, help="epochs each process trains")
    search = parser.add_argument_group("search")
    search.add_argument("--db-sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    search.add_argument("--search-bits", type=int, nargs="+", default=[64, 128])
    search.add_argument("--queries", type=int, default=1000)
    search.add_argument("--search-backends", nargs="+", choices=("torch", "faiss"), default=["torch"],
                        help="faiss needs faiss installed (CPU machines only)")
    search.add_argument("--reference-queries", type=int, default=100, help="queries for the XOR-and-sort baseline")
    search.add_argument("--reference-db", type=int, default=100_000, help="codes the XOR-and-sort baseline scans")
    return parser.parse_args(argv)


def main(argv=None) -> int:
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
              "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "sections": args.sections,
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
