#!/usr/bin/env bash
# One fuzzing campaign run of one target, recorded: runs the target (niced: the machine is
# shared) for RUNS executions or SECONDS of wall clock, whichever ends first, over its
# grown corpus (kept outside git, in $FUZZ_CACHE/corpus/<target>, default
# ~/.cache/ambulance/fuzz), its seeds and its regression inputs, and keeps:
#
# * the whole libFuzzer output in $FUZZ_CACHE/logs/;
# * its summary lines (start, INITED, DONE, final stats, and any crash report), with the
#   commit, the machine and the command, in fuzz/logs/<target>/<UTC time>.log — what
#   fuzz/results.py reads to write fuzz/RESULTS.md.
#
#   fuzz/campaign.sh TARGET RUNS [SECONDS]     # e.g. fuzz/campaign.sh descriptor 10000000 3600
#
# Environment: FUZZ_SANITIZER (cargo-fuzz's -s: address, the default, or none: the
# targets' code is safe Rust, so a campaign after the ASan runs may trade the sanitizer
# for three to five times the executions; debug assertions and overflow checks stay on
# either way), FUZZ_NICE (default 19), FUZZ_MAX_LEN (default 2097152). The log records
# all three.
#
# A crash ends the run with libFuzzer's report in the log and the input in
# fuzz/artifacts/<target>/; fix the bug, copy the input to fuzz/regressions/<target>/
# (the workspace test replays it), commit, and run again.
set -euo pipefail
cd "$(dirname "$0")/.."

target="${1:?usage: fuzz/campaign.sh TARGET RUNS [SECONDS]}"
runs="${2:?usage: fuzz/campaign.sh TARGET RUNS [SECONDS]}"
seconds="${3:-0}"
cache="${FUZZ_CACHE:-$HOME/.cache/ambulance/fuzz}"
sanitizer="${FUZZ_SANITIZER:-address}"
niceness="${FUZZ_NICE:-19}"
max_len="${FUZZ_MAX_LEN:-2097152}"

cargo_fuzz="$(fuzz/setup.sh)"
export PATH="$(dirname "$cargo_fuzz"):$PATH"

commit="$(git rev-parse --short=12 HEAD)"
if ! git diff --quiet HEAD -- crates fuzz/fuzz_targets fuzz/Cargo.toml Cargo.toml Cargo.lock; then
    echo "fuzz/campaign.sh: the parsers or targets differ from $commit; commit first" >&2
    exit 1
fi
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$cache/corpus/$target" "$cache/logs" "fuzz/logs/$target"
full="$cache/logs/$target-$stamp.log"
summary="fuzz/logs/$target/$stamp.log"

nice -n "$niceness" cargo +nightly fuzz build --fuzz-dir fuzz -s "$sanitizer" "$target"

dirs=("$cache/corpus/$target")
for d in "fuzz/seeds/$target" "fuzz/regressions/$target"; do
    [[ -d $d ]] && dirs+=("$d")
done
args=(-runs="$runs" -max_total_time="$seconds" -timeout=10 -max_len="$max_len"
    -print_final_stats=1 -print_pcs=0)
cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
{
    echo "# target: $target"
    echo "# commit: $commit"
    echo "# started: $stamp"
    echo "# machine: $(uname -srm), $(nproc) cores ($cpu), $(awk '/MemTotal/ {printf "%d GiB", $2/1048576}' /proc/meminfo), shared, nice $niceness"
    echo "# toolchain: $(rustc +nightly --version), $("$cargo_fuzz" --version)"
    echo "# command: cargo +nightly fuzz run --fuzz-dir fuzz -s $sanitizer $target ${dirs[*]} -- ${args[*]}"
} >"$summary"

status=0
nice -n "$niceness" cargo +nightly fuzz run --fuzz-dir fuzz -s "$sanitizer" "$target" "${dirs[@]}" -- "${args[@]}" \
    >"$full" 2>&1 || status=$?

# libFuzzer's own lines that say what happened: how it started (seed, corpus), INITED
# (seed-corpus coverage), DONE (final coverage, features, corpus: a run ended by
# -max_total_time), "Done N runs" (a run ended by -runs), the final stats, and, after a
# crash, its report and where it wrote the input.
grep -aE '^(INFO: (Seed|Loaded|-max_len|[0-9]+ files found|seed corpus)|#[0-9]+[[:space:]]+(INITED|DONE)|stat::|Done [0-9]+ runs|==[0-9]+== ?ERROR|SUMMARY|thread .* panicked|MS: |artifact_prefix|Test unit written|Base64: |[[:space:]]+#[0-9]+ 0x)' \
    "$full" | cut -c1-400 >>"$summary" || true
# A run that ends by -runs prints no DONE line: its last status line says where it got.
grep -aE '^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse|DONE|INITED)[[:space:]]' "$full" | tail -n 1 |
    sed 's/^/last status: /' >>"$summary" || true
if grep -qaE '^#[0-9]+[[:space:]]+DONE|^Done [0-9]+ runs' "$full" && ((status == 0)); then
    echo "# ended: $(date -u +%Y%m%dT%H%M%SZ), ok" >>"$summary"
else
    echo "# ended: $(date -u +%Y%m%dT%H%M%SZ), exit status $status" >>"$summary"
fi
tail -n 3 "$summary"
exit "$status"
