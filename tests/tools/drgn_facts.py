"""What drgn reads from a kernel core, one fact per line, for tests to compare.

    drgn_facts.py CORE [VMLINUX]

Prints `task PID COMM` for every task, `log TEXT` for every printk record and, for the
crashed thread, `frame NAME` for each frame of its stack trace.
"""

import sys

import drgn
from drgn.helpers.linux.pid import for_each_task
from drgn.helpers.linux.printk import get_printk_records

prog = drgn.Program()
prog.set_core_dump(sys.argv[1])
if len(sys.argv) > 2:
    prog.load_debug_info([sys.argv[2]])
else:
    prog.load_default_debug_info()

for task in for_each_task(prog):
    print("task", task.pid.value_(), task.comm.string_().decode(errors="replace"))
for record in get_printk_records(prog):
    print("log", record.text.decode(errors="replace"))
try:
    trace = prog.crashed_thread().stack_trace()
except Exception as e:  # noqa: BLE001 - say why, the test shows it
    print("no-trace", e)
else:
    for frame in trace:
        print("frame", frame.name or hex(frame.pc))
