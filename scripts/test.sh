#!/usr/bin/env bash
# The project's test command (README): formatting, lints, then every test target.
#
# Integration tests start real PostgreSQL nodes and pgmulti processes and mostly wait on the
# network and on timed runs (pgbench -T 10, a 10 s idle-CPU sample). Two test threads keep a
# 2-core machine busy without letting CPU-heavy tests (pgbench with 8 clients) starve the
# timing-sensitive ones (cancel < 5 s, idle CPU < 1%).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
# The fuzz targets (fuzz/, their own workspace, run with nightly) must keep compiling against
# the crate's API; checking them on stable takes a few seconds.
cargo check --quiet --manifest-path fuzz/Cargo.toml --bins
cargo test --all-targets -- --test-threads=2
