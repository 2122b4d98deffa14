#!/usr/bin/env bash
# CI's smoke run of the fuzz targets, so they cannot rot: builds every cargo-fuzz target
# (nightly, libFuzzer, debug assertions, no sanitizer unless FUZZ_SMOKE_SANITIZER names
# one) and runs each over its seeds and regression inputs and then for FUZZ_SMOKE_RUNS
# (default 2000) mutated inputs. Fails on the first crash, timeout (FUZZ_SMOKE_TIMEOUT
# seconds for one input, default 10) or build error (the failing input is kept in
# fuzz/artifacts/<target>/). The grown corpus goes to a temporary directory and is
# thrown away.
#
#   fuzz/smoke.sh            # all targets
#   fuzz/smoke.sh btf dwarf  # some
set -euo pipefail
cd "$(dirname "$0")/.."

cargo_fuzz="$(fuzz/setup.sh)"
export PATH="$(dirname "$cargo_fuzz"):$PATH"
runs="${FUZZ_SMOKE_RUNS:-2000}"
# The dev profile at opt-level 1 (with debug assertions): it builds in a fraction of the
# release build's time, and runs fast enough — unoptimized, the DWARF and kallsyms targets
# take seconds an input. FUZZ_SMOKE_RELEASE=1 builds the release profile, as the campaigns
# do.
profile=(--dev)
export CARGO_PROFILE_DEV_OPT_LEVEL=1 CARGO_PROFILE_DEV_DEBUG=line-tables-only
# CI builds this once from nothing: incremental state would only add gigabytes to the disk.
export CARGO_INCREMENTAL=0
[[ ${FUZZ_SMOKE_RELEASE:-0} != 0 ]] && profile=()
# No sanitizer: the smoke run proves that each target builds, takes its seeds and survives
# mutations (a panic, an overflow, a timeout or running out of memory still fails it), and
# AddressSanitizer made its build take half as long again (222 s against 152 s from
# nothing, 2 cores) and its runs several times longer. The recorded campaigns run under
# it; FUZZ_SMOKE_SANITIZER=address does too.
profile+=(--sanitizer "${FUZZ_SMOKE_SANITIZER:-none}")
timeout="${FUZZ_SMOKE_TIMEOUT:-10}"

if (($# > 0)); then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir fuzz)
fi

start=$SECONDS
if (($# > 0)); then
    for t in "${targets[@]}"; do cargo +nightly fuzz build "${profile[@]}" --fuzz-dir fuzz "$t"; done
else
    cargo +nightly fuzz build "${profile[@]}" --fuzz-dir fuzz
fi
echo "fuzz/smoke.sh: built ${#targets[@]} targets in $((SECONDS - start)) s"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for t in "${targets[@]}"; do
    t0=$SECONDS
    dirs=("$work/$t")
    mkdir -p "$work/$t"
    for d in fuzz/seeds/$t fuzz/regressions/$t; do
        [[ -d $d ]] && dirs+=("$d")
    done
    if ! cargo +nightly fuzz run "${profile[@]}" --fuzz-dir fuzz "$t" "${dirs[@]}" -- \
        -runs="$runs" -timeout="$timeout" -max_len=2097152 -print_final_stats=1 \
        >"$work/$t.log" 2>&1; then
        tail -n 80 "$work/$t.log" >&2
        echo "fuzz/smoke.sh: $t FAILED; the input is kept in fuzz/artifacts/$t/" >&2
        exit 1
    fi
    echo "fuzz/smoke.sh: $t: $(grep -aE '^Done [0-9]+ runs' "$work/$t.log" | tail -1) ($((SECONDS - t0)) s)"
done
echo "fuzz/smoke.sh: ${#targets[@]} targets passed in $((SECONDS - start)) s"
