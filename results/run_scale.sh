#!/usr/bin/env bash
# The runs behind results/scale.md: each writes results/NAME.{json,md} after every section (JSON is gitignored;
# the .md tables are committed). Corpora and preparations go to runs/scale (about 3 GiB). ~50 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
B=".venv/bin/python -m bench.run scale --workdir runs/scale"
$B --sizes 10000 100000 --sections prepare train serve --name scale-small
$B --code-sizes 1000000 10000000 --sections search --name scale-search
$B --sizes 10000 1000000 --sections prepare train --name scale-1m   # stopped during train: superseded by scale-train
$B --sizes 10000 100000 1000000 --sections train --name scale-train
$B --sizes 100000 1000000 --sections stream --name scale-stream   # needs root for its cgroup-limited runs
$B --sizes 1000000 --code-sizes 1000000 --sections search --search-model-n 1000000 --name scale-model-codes
