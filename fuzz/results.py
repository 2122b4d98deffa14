#!/usr/bin/env python3
"""Writes the campaign table of fuzz/RESULTS.md from the summary logs in fuzz/logs/.

Every number comes from libFuzzer's own lines in those logs: executions are the sum of
`stat::number_of_executed_units` over a target's runs; coverage (cov), features (ft) and
corpus (units/bytes) are those of its last run's last status line (`DONE` when the run
ended by time, the last `NEW`/`REDUCE`/`pulse` line when it ended by -runs); a run that
did not end cleanly (campaign.sh's `# ended: …, ok`) is counted as a crash (its log holds
libFuzzer's report), unless its log says it was interrupted (stopped or killed from
outside): then its executions are those of libFuzzer's final stats when it printed them,
else of its last status line. The table replaces what lies between the
`<!-- campaign table -->` markers of RESULTS.md.

    fuzz/results.py          # rewrite the table
    fuzz/results.py --check  # exit 1 if RESULTS.md is not what the logs say
"""

import pathlib
import re
import sys

FUZZ = pathlib.Path(__file__).resolve().parent
TARGETS = [
    # (target, executions the campaign needs)
    ("descriptor", 10_000_000),
    ("vmcoreinfo", 10_000_000),
    ("qmp_registers", 10_000_000),
    ("rules", 10_000_000),
    ("elf_core", 1_000_000),
    ("page_walk", 1_000_000),
    ("dwarf", 1_000_000),
    ("btf", 1_000_000),
    ("kallsyms", 1_000_000),
    ("printk", 1_000_000),
    ("worker_protocol", 1_000_000),
    ("report_json", 1_000_000),
    ("kernel_log", 1_000_000),
    ("orc_unwind", 1_000_000),
]
STATUS = re.compile(
    r"^(?:last status: )?#(\d+)\s+(INITED|DONE|NEW|REDUCE|pulse|RELOAD)\s+cov: (\d+) ft: (\d+) corp: (\d+)/(\S+)"
)
BEGIN, END = "<!-- campaign table -->", "<!-- end of campaign table -->"


def header(lines, key):
    for line in lines:
        if line.startswith(f"# {key}: "):
            return line.split(": ", 1)[1].strip()
    return "?"


def run_of(path):
    lines = path.read_text(errors="replace").splitlines()
    execs = sum(int(m.group(1)) for l in lines if (m := re.match(r"^stat::number_of_executed_units:\s+(\d+)", l)))
    per_sec = [int(m.group(1)) for l in lines if (m := re.match(r"^stat::average_exec_per_sec:\s+(\d+)", l))]
    status = [m for l in lines if (m := STATUS.match(l))]
    done = any(l.startswith("# ended: ") and l.endswith(", ok") for l in lines)
    # A run stopped from outside (its log says "interrupted"): a SIGINT still prints
    # libFuzzer's final stats; a kill does not, and its last status line's count is used.
    interrupted = any(l.startswith("# ended: ") and ", interrupted" in l for l in lines)
    last = status[-1] if status else None
    if interrupted and not execs and last:
        execs = int(last.group(1))
        if not per_sec and (m := re.search(r"exec/s: (\d+)", last.string)):
            per_sec = [int(m.group(1))]
    return {
        "log": path.relative_to(FUZZ.parent),
        "commit": header(lines, "commit"),
        "started": header(lines, "started"),
        "machine": header(lines, "machine"),
        # campaign.sh's command line names the sanitizer when it is not the default.
        "sanitizer": (m.group(1) if (m := re.search(r" -s (\S+) ", header(lines, "command"))) else "address"),
        "max_len": (f"{int(m.group(1)):,}" if (m := re.search(r"-max_len=(\d+)", header(lines, "command"))) else "–"),
        "execs": execs,
        "per_sec": per_sec[-1] if per_sec else None,
        "cov": int(last.group(3)) if last else None,
        "ft": int(last.group(4)) if last else None,
        "corp": f"{last.group(5)}/{last.group(6)}" if last else "?",
        "crashed": not done and not interrupted,
        "interrupted": interrupted,
    }


def table():
    rows = [
        "| target | executions (needed) | runs | exec/s (last run) | cov | ft | corpus (units/bytes) | runs that crashed | commits of the runs |",
        "|---|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    machines = set()
    for target, needed in TARGETS:
        runs = sorted((run_of(p) for p in (FUZZ / "logs" / target).glob("*.log")), key=lambda r: r["started"])
        machines.update(r["machine"] for r in runs)
        total = sum(r["execs"] for r in runs)
        last = runs[-1] if runs else None
        ok = "" if total >= needed else " **short**"
        commits = ", ".join(dict.fromkeys(f"`{r['commit']}`" for r in runs)) or "–"
        rows.append(
            f"| `{target}` | {total:,} ({needed:,}){ok} | {len(runs)} | "
            f"{last['per_sec'] if last and last['per_sec'] is not None else '–'} | "
            f"{last['cov'] if last else '–'} | {last['ft'] if last else '–'} | "
            f"{last['corp'] if last else '–'} | {sum(r['crashed'] for r in runs)} | {commits} |"
        )
    rows.append("")
    for m in sorted(machines):
        rows.append(f"Machine: {m}.")
    rows += [
        "",
        "Every run:",
        "",
        "| target | started (UTC) | commit | sanitizer | max_len | executions | exec/s | cov | ft | corpus | ended | log |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for target, _ in TARGETS:
        for r in sorted((run_of(p) for p in (FUZZ / "logs" / target).glob("*.log")), key=lambda r: r["started"]):
            rows.append(
                f"| `{target}` | {r['started']} | `{r['commit']}` | {r['sanitizer']} | {r['max_len']} | {r['execs']:,} | {r['per_sec'] or '–'} | "
                f"{r['cov'] or '–'} | {r['ft'] or '–'} | {r['corp']} | {'crash' if r['crashed'] else 'interrupted' if r['interrupted'] else 'DONE'} | "
                f"[log]({pathlib.PurePosixPath(r['log']).relative_to('fuzz')}) |"
            )
    return "\n".join(rows)


def main():
    results = FUZZ / "RESULTS.md"
    text = results.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    new = text[:start] + "\n" + table() + "\n" + text[end:]
    if "--check" in sys.argv[1:]:
        if new != text:
            print("fuzz/RESULTS.md is not what fuzz/logs/ say: run fuzz/results.py", file=sys.stderr)
            sys.exit(1)
        return
    results.write_text(new)


if __name__ == "__main__":
    main()
