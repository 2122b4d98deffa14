#!/usr/bin/env bash
# Regenerates benches/RESULTS.md: runs every bench (or the ones named) at the current
# commit, keeps each one's output in benches/runs/<bench>.log (with the commit, the
# machine, its load and the exact command), and has benches/results.py write RESULTS.md
# from those logs — so every figure in RESULTS.md is a line some bench printed.
#
#   benches/regenerate.sh                  # every bench, then RESULTS.md
#   benches/regenerate.sh linux service    # only these; the others' logs are kept
#
# RESULTS.md names the commit of every log and says so loudly when they differ: for a
# file at one commit, run them all. Benches that need a resource this machine lacks
# (/dev/kvm, QEMU, drgn, a vmlinux, a NATS server) say SKIPPED in their log, and the
# file says which. Run it on a quiet machine: the load before and after each bench is
# recorded next to its figures.
set -euo pipefail
cd "$(dirname "$0")/.."

# Every bench of Cargo.toml, in its order.
mapfile -t ALL < <(awk '/^\[\[bench\]\]/ {b=1; next} b && /^name = / {gsub(/"/, "", $3); print $3; b=0}' Cargo.toml)
if (($#)); then benches=("$@"); else benches=("${ALL[@]}"); fi

if ! git diff --quiet HEAD -- crates benches/*.rs guest-agent tests Cargo.toml Cargo.lock; then
    echo "benches/regenerate.sh: the code differs from $(git rev-parse --short=12 HEAD); commit first" >&2
    exit 1
fi
commit="$(git rev-parse --short=12 HEAD)"
cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
machine="$(uname -srm), $(nproc) cores ($cpu), $(awk '/MemTotal/ {printf "%d GiB", $2/1048576}' /proc/meminfo)"
mkdir -p benches/runs

# A name that is not a bench is an error, not a skip.
for b in "${benches[@]}"; do
    [[ " ${ALL[*]} " == *" $b "* ]] || { echo "benches/regenerate.sh: no bench named $b in Cargo.toml (${ALL[*]})" >&2; exit 1; }
done

cargo bench --no-run "${benches[@]/#/--bench=}" >&2

# The DWARF bench's vmlinux half reads the Linux fixture's -dbg vmlinux.
if [[ -z ${AMBULANCE_VMLINUX:-} ]]; then
    AMBULANCE_VMLINUX="$(bash fixtures/linux/build.sh --dbg | tail -n 1)/vmlinux"
    export AMBULANCE_VMLINUX
fi

for b in "${benches[@]}"; do
    log="benches/runs/$b.log"
    echo "benches/regenerate.sh: $b" >&2
    {
        echo "# bench: $b"
        echo "# commit: $commit"
        echo "# started: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "# machine: $machine"
        echo "# toolchain: $(rustc --version)"
        echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "# command: cargo bench --bench $b -- --noplot"
    } >"$log"
    status=0
    # Criterion's progress goes to stderr; its results and every bench's own lines to
    # stdout, which is what the log keeps.
    cargo bench --bench "$b" -- --noplot >>"$log" 2>"benches/runs/.$b.stderr" || status=$?
    {
        # What a bench says on stderr about itself: what it skipped, and why it failed.
        grep -a 'SKIPPED' "benches/runs/.$b.stderr" | sed 's/^/stderr: /' || true
        if ((status != 0)); then tail -n 20 "benches/runs/.$b.stderr" | sed 's/^/stderr: /'; fi
        echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "# ended: $(date -u +%Y-%m-%dT%H:%M:%SZ), exit status $status"
    } >>"$log"
    if ((status != 0)); then
        echo "benches/regenerate.sh: $b failed (exit $status); see $log" >&2
    fi
done

python3 benches/results.py
echo "benches/regenerate.sh: RESULTS.md written from benches/runs/*.log" >&2
