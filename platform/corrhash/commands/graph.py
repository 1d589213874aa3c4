"""Search a corpus's document graph (each train document's nearest neighbours by TF-IDF cosine, what STH and the
-nbr models learn from) and cache it beside the shards, where every training run, trial and ablation cell on that
corpus then reads it instead of searching again. With --ray the search's blocks run as Ray tasks across the
cluster (the same lists as one process).

Examples:
  python jobs/graph.py --data data/20ng                       # exact up to 30,000 train documents
  python jobs/graph.py --data data/big --ray                  # a local Ray, or $RAY_ADDRESS
  ray job submit -- python jobs/graph.py --data /shared/big --ray --search pruned

The lists are searched --neighbours wide and serve every k up to it (a model's --neighbours and --graph knn or
mutual); `train.py` and `tune.py` search it themselves when no cached graph fits, one process each (the tune
searches it on Ray before its trials start).
"""

from __future__ import annotations

from dataclasses import dataclass

from corrhash import commands
from corrhash.data import TfidfShards
from corrhash.errors import ConfigError
from corrhash.models.config import GraphSearch
from corrhash.models.graph import run_here
from corrhash.train.neighbours import LIST_WIDTH, cached_lists


@dataclass
class GraphOptions:
    data: str
    """Prepared shards (a folder or URI, from prepare_data.py)."""
    neighbours: int = LIST_WIDTH
    """How many neighbours each document's list holds: it serves every model k up to this."""
    search: GraphSearch = "auto"
    """auto (exact up to 30,000 train documents, pruned above), exact, pruned (an inverted index of each document's
    heaviest terms; its recall measured on a sample and printed), nndescent (the nndescent extra)."""
    ray: bool = False
    """Run the search's blocks as Ray tasks across the cluster (same lists as one process)."""
    address: str | None = None
    """With --ray: the Ray cluster (default: $RAY_ADDRESS, else a local Ray)."""

    def __post_init__(self) -> None:
        if self.neighbours < 1:
            raise ConfigError(f"--neighbours {self.neighbours}: must be >= 1")
        if self.address is not None and not self.ray:
            raise ConfigError("--address applies with --ray only")


def main(argv: list[str] | None = None) -> int:
    def job() -> None:
        options = commands.parse(GraphOptions, __doc__, argv, title="graph")
        print(f"config: {options}", flush=True)
        shards = TfidfShards(options.data)
        run_blocks = run_here
        if options.ray:
            from corrhash.launch.blocks import ray_blocks
            from corrhash.launch.connect import init_ray

            init_ray(options.address)
            commands.install_sigterm()
            run_blocks = ray_blocks
        ids, _, info = cached_lists(shards, options.neighbours, method=options.search, run_blocks=run_blocks)
        search = info.search
        measured = (f"; recall@{ids.shape[1]} {search['sampled_recall']:.4f} on {search['recall_sample']} sampled "
                    f"documents ({search['index_terms']} index terms, {search['candidates']} candidates)"
                    if "sampled_recall" in search else "")
        print(f"{'searched' if info.built else 'reused'} {info.path}: {ids.shape[0]} documents, lists "
              f"{ids.shape[1]} wide, {info.method} search in {info.seconds:.1f} s{measured}")

    return commands.run(job)
