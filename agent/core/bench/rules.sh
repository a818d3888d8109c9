#!/usr/bin/env bash
# `make bench-rules`: time, peak RSS and spill size of each aggregation rule
# (fl_core::rules) for 10, 50 and 100 updates of the paper's CNN, one child process per
# configuration (agent/core/examples/rules_bench.rs). Arguments go to the example, e.g.
#   bash agent/core/bench/rules.sh --sizes 10,200 --spill-dir /var/tmp
set -euo pipefail
cd "$(dirname "$0")/../../.."
cargo build --quiet --release -p fl-core --example rules_bench
target/release/examples/rules_bench "$@"
