#!/usr/bin/env python3
"""Writes benches/RESULTS.md from the bench logs in benches/runs/ (benches/regenerate.sh).

Nothing in RESULTS.md is typed by hand: each bench's section is its module documentation
(the `//!` lines of benches/<bench>.rs: what it measures and how), then what it printed:

* `result: <section> | <figure> | <measured> | <goal> | <notes>` lines, the bench's own
  figures (medians, percentiles, ratios and goals computed by its code), as tables;
* criterion's estimates (`time: [low median high]`, `thrpt: [...]`) per benchmark;
* any other line the bench printed, verbatim;
* SKIPPED lines and, for a bench that failed, the end of its stderr;

and, last, benches/NOTES.md if there is one: why goals were not met, written by hand,
without figures of its own.

Each log records the commit, machine, load and command it ran with; the file says when
the logs are not all from one commit.

    benches/results.py          # rewrite RESULTS.md
    benches/results.py --check  # exit 1 if RESULTS.md is not what the logs say
"""

import pathlib
import re
import sys

BENCHES = pathlib.Path(__file__).resolve().parent
ROOT = BENCHES.parent
RUNS = BENCHES / "runs"
OUT = BENCHES / "RESULTS.md"

ESTIMATE = re.compile(r"^(?P<name>\S.*?)?\s*(?P<what>time|thrpt):\s+\[(?P<lo>[^\]]+?)\s+(?P<mid>\S+ \S+)\s+(?P<hi>\S+ \S+)\]\s*$")
# Criterion's chatter that carries no figure of this run (comparisons with an earlier
# local run, outlier counts).
NOISE = re.compile(
    r"^\s*(change:|Found \d+ outliers|\d+ \(\d+\.\d+%\) (low|high) (mild|severe)|"
    r"No change in performance|Change within noise|Performance has (improved|regressed)|"
    r"Benchmarking |Gnuplot not found|WARNING: )"
)


def bench_order():
    names, in_bench = [], False
    for line in (ROOT / "Cargo.toml").read_text().splitlines():
        if line.strip() == "[[bench]]":
            in_bench = True
        elif in_bench and (m := re.match(r'^name = "([^"]+)"', line)):
            names.append(m.group(1))
            in_bench = False
    return names


def module_doc(bench):
    path = BENCHES / f"{bench}.rs"
    if not path.exists():
        return ""
    doc = []
    for line in path.read_text().splitlines():
        if line.startswith("//!"):
            doc.append(line[4:] if line.startswith("//! ") else line[3:])
        elif doc or line.strip():
            break
    return "\n".join(doc).strip()


def parse(log):
    lines = log.read_text(errors="replace").splitlines()
    run = {"header": {}, "results": [], "estimates": [], "other": [], "skipped": [], "stderr": []}
    name = None
    for line in lines:
        if line.startswith("# ") and ": " in line:
            key, value = line[2:].split(": ", 1)
            run["header"][key] = value
            continue
        if line.startswith("stderr: "):
            text = line[len("stderr: "):]
            (run["skipped"] if "SKIPPED" in text else run["stderr"]).append(text)
            continue
        if line.startswith("result: "):
            fields = [f.strip() for f in line[len("result: "):].split(" | ")]
            fields += ["–"] * (5 - len(fields))
            run["results"].append(fields[:4] + [" | ".join(fields[4:])])
            continue
        if "SKIPPED" in line:
            run["skipped"].append(line.strip())
            continue
        m = ESTIMATE.match(line)
        if m:
            if m.group("name"):
                name = m.group("name").strip()
            if m.group("what") == "time":
                run["estimates"].append([name or "?", f"{m.group('mid')} [{m.group('lo')}, {m.group('hi')}]", ""])
            elif run["estimates"]:
                run["estimates"][-1][2] = f"{m.group('mid')} [{m.group('lo')}, {m.group('hi')}]"
            continue
        if NOISE.match(line) or not line.strip():
            continue
        # A benchmark's name alone on its line, its estimate on the next.
        if not line.startswith(" ") and re.fullmatch(r"[\w./:+-]+", line.strip()):
            name = line.strip()
            continue
        if line.startswith("running ") or re.match(r"^test result:|^test .* \.\.\. ", line):
            continue  # the libtest harness of a bench without criterion
        run["other"].append(line.rstrip())
    return run


def cell(text):
    return text.replace("|", "\\|")


def render():
    order = bench_order()
    runs = {}
    for bench in order:
        log = RUNS / f"{bench}.log"
        if log.exists():
            runs[bench] = parse(log)
    commits = sorted({r["header"].get("commit", "?") for r in runs.values()})
    machines = sorted({r["header"].get("machine", "?") for r in runs.values()})
    out = ["# Benchmark results", ""]
    out.append(
        "Written by `benches/results.py` from the logs `benches/regenerate.sh` keeps in "
        "`benches/runs/`: every figure below is a line a bench printed (its `result:` lines, "
        "criterion's estimates, or another line of its output, verbatim). Regenerate with "
        "`benches/regenerate.sh` on a quiet machine."
    )
    out.append("")
    if len(commits) == 1:
        out.append(f"- **Commit**: `{commits[0]}` (every bench below ran at it).")
    else:
        out.append(f"- **Commits differ between benches**: {', '.join(f'`{c}`' for c in commits)} — see each section.")
    for m in machines:
        out.append(f"- **Machine**: {m}.")
    missing = [b for b in order if b not in runs]
    if missing:
        out.append(f"- **Not run**: {', '.join(f'`{b}`' for b in missing)} (no log in `benches/runs/`).")
    out.append("")
    for bench, run in runs.items():
        h = run["header"]
        out.append(f"## `{bench}` (`cargo bench --bench {bench}`)")
        out.append("")
        out.append(
            f"Commit `{h.get('commit', '?')}`, {h.get('started', '?')}; load average before "
            f"{h.get('load before', '?')}, after {h.get('load after', '?')}; {h.get('ended', '?').split(', ', 1)[-1]}."
        )
        out.append("")
        doc = module_doc(bench)
        if doc:
            out.extend("> " + l if l else ">" for l in doc.splitlines())
            out.append("")
        for s in run["skipped"]:
            out.append(f"**{s}**")
            out.append("")
        sections = []
        for r in run["results"]:
            if r[0] not in sections:
                sections.append(r[0])
        for section in sections:
            out.append(f"### {section}")
            out.append("")
            out.append("| figure | measured | goal | notes |")
            out.append("|---|---|---|---|")
            for r in run["results"]:
                if r[0] == section:
                    out.append("| " + " | ".join(cell(f) for f in r[1:]) + " |")
            out.append("")
        if run["estimates"]:
            out.append("Criterion's estimates (median [95 % confidence interval]):")
            out.append("")
            out.append("| benchmark | time | throughput |")
            out.append("|---|---|---|")
            for name, time, thrpt in run["estimates"]:
                out.append(f"| `{cell(name)}` | {time} | {thrpt or '–'} |")
            out.append("")
        if run["other"]:
            out.append("Also printed:")
            out.append("")
            out.append("```")
            out.extend(run["other"])
            out.append("```")
            out.append("")
        if run["stderr"]:
            out.append("**The bench failed**; the end of its stderr:")
            out.append("")
            out.append("```")
            out.extend(run["stderr"])
            out.append("```")
            out.append("")
    notes = BENCHES / "NOTES.md"
    if notes.exists():
        out.append("## Notes on this run (written by hand; every figure is above)")
        out.append("")
        out.append(notes.read_text().strip())
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def main():
    text = render()
    if "--check" in sys.argv[1:]:
        if OUT.read_text() != text:
            print("benches/RESULTS.md differs from what benches/runs/*.log say; run benches/results.py", file=sys.stderr)
            sys.exit(1)
        return
    OUT.write_text(text)


if __name__ == "__main__":
    main()
