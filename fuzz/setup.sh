#!/usr/bin/env bash
# Installs what the cargo-fuzz targets need, once: a nightly toolchain (libFuzzer's
# instrumentation needs it) and cargo-fuzz at a pinned version, built from crates.io with
# its own lock file. Idempotent: does nothing when both are there.
#
#   fuzz/setup.sh            # then: cargo +nightly fuzz run <target>   (from the repo root)
#
# CARGO_FUZZ_ROOT chooses where cargo-fuzz is installed (default ~/.cargo, so it lands in
# ~/.cargo/bin beside cargo). The script prints the cargo-fuzz binary's path last.
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2
root="${CARGO_FUZZ_ROOT:-${CARGO_HOME:-$HOME/.cargo}}"
bin="$root/bin/cargo-fuzz"

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz/setup.sh: installing the nightly toolchain" >&2
    rustup toolchain install nightly --profile minimal
fi

if [[ -x "$bin" ]] && "$bin" --version 2>/dev/null | grep -q " $CARGO_FUZZ_VERSION\$"; then
    echo "$bin"
    exit 0
fi

echo "fuzz/setup.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION into $root" >&2
# cargo-fuzz itself builds on stable; one job so that a shared 2-core machine stays usable.
nice -n 19 cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked \
    --root "$root" --jobs 1 >&2
echo "$bin"
