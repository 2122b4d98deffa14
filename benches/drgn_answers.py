"""drgn answering what `ambulance diagnose --core` answers on a Linux vmcore: the dmesg
records, the task list (pid, comm) and the panic message; with --traces, also the stack
trace of every task (`stack_trace()`), as the report's `kernel.tasks[].stack` holds.

Usage: python drgn_answers.py [--traces] VMCORE [VMLINUX]

benches/linux.rs runs this as a whole process under the drgn venv's Python
(fixtures/ensure-drgn.sh) and times it from outside, Python's start-up and imports
included; it measures `python -c pass` and `python -c 'import drgn'` apart.

Prints one JSON line: the counts and the panic message, or `error` with what drgn raised
(then the exit status is 1). Without VMLINUX drgn looks for debug info where it usually
does (`load_default_debug_info`).
"""
import json
import sys

args = sys.argv[1:]
traces = args[:1] == ["--traces"]
if traces:
    args = args[1:]
if len(args) not in (1, 2):
    sys.exit(__doc__)

import drgn  # noqa: E402
from drgn.helpers.linux.pid import for_each_task  # noqa: E402
from drgn.helpers.linux.printk import get_printk_records  # noqa: E402

result = {}
try:
    prog = drgn.Program()
    prog.set_core_dump(args[0])
    if len(args) == 2:
        prog.load_debug_info([args[1]])
    else:
        prog.load_default_debug_info()
    records = get_printk_records(prog)
    tasks = list(for_each_task(prog))
    names = [(t.pid.value_(), t.comm.string_().decode(errors="replace")) for t in tasks]
    panic = [r.text.decode() for r in records if b"Kernel panic - not syncing: " in r.text]
    result.update(
        records=len(records),
        tasks=len(names),
        panic=panic[-1].split("not syncing: ", 1)[1] if panic else None,
    )
    if traces:
        traced = frames = 0
        failed = []
        for t in tasks:
            try:
                n = len(prog.stack_trace(t))
            except Exception as e:  # noqa: BLE001 - counted and reported
                failed.append(f"{t.pid.value_()}: {type(e).__name__}: {e}")
                continue
            traced += n > 0
            frames += n
        result.update(traced=traced, frames=frames, trace_failures=failed[:3])
except Exception as e:  # noqa: BLE001 - reported as drgn printed it
    result["error"] = f"{type(e).__name__}: {e}"
print(json.dumps(result))
sys.exit(1 if "error" in result else 0)
