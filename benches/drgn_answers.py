"""drgn's answers to the questions `benches/linux.rs` times Ambulance on: the dmesg
records, the task list (pid, comm) and the panic message of a Linux vmcore.

Usage: python3 drgn_answers.py VMCORE [VMLINUX]
Prints one JSON line: the counts, the panic message, and the seconds spent opening
(core + debug info) and answering.
"""
import json
import sys
import time

t0 = time.perf_counter()
import drgn  # noqa: E402
from drgn.helpers.linux.pid import for_each_task  # noqa: E402
from drgn.helpers.linux.printk import get_printk_records  # noqa: E402

prog = drgn.Program()
prog.set_core_dump(sys.argv[1])
error = None
try:
    if len(sys.argv) > 2:
        prog.load_debug_info([sys.argv[2]])
    else:
        prog.load_debug_info(main=True)
except Exception as e:  # drgn raises when it finds no debug info
    error = str(e)
t1 = time.perf_counter()
result = {"open_s": t1 - t0}
try:
    records = get_printk_records(prog)
    tasks = [(t.pid.value_(), t.comm.string_().decode()) for t in for_each_task(prog)]
    panic = [r.text.decode() for r in records if b"Kernel panic - not syncing: " in r.text]
    t2 = time.perf_counter()
    result.update(
        records=len(records),
        tasks=len(tasks),
        panic=panic[-1].split("not syncing: ", 1)[1] if panic else None,
        answer_s=t2 - t1,
        total_s=t2 - t0,
    )
except Exception as e:
    result["error"] = f"{type(e).__name__}: {e}" + (f" (debug info: {error})" if error else "")
print(json.dumps(result))
