"""drgn's stack traces of a kernel core, as JSON, for tests to compare with ours.

    drgn_traces.py CORE VMLINUX

Prints one JSON object: `crashed`, the frames of `prog.crashed_thread().stack_trace()`,
and `tasks`, every task's (by `task_struct` address, as `0x…`) with its `pid`, `comm`,
whether it is `on_cpu`, and its `frames` (or the `error` that stopped drgn). A frame is
`{"name", "symbol", "inline", "pc", "file", "line", "column"}` (`symbol` the ELF symbol
drgn found, `{"name", "address", "size"}`), innermost first, inlined functions before
the function they are in, as drgn lists them.
"""

import json
import sys

import drgn
from drgn.helpers.linux.pid import for_each_task

prog = drgn.Program()
prog.set_core_dump(sys.argv[1])
prog.load_debug_info([sys.argv[2]])


def frames(trace):
    out = []
    for frame in trace:
        try:
            file, line, column = frame.source()
        except LookupError:
            file = line = column = None
        try:
            sym = frame.symbol()
        except LookupError:
            symbol = None
        else:
            symbol = {"name": sym.name, "address": sym.address, "size": sym.size}
        out.append(
            {
                "name": frame.name,
                "symbol": symbol,
                "inline": frame.is_inline,
                "pc": frame.pc,
                "file": file,
                "line": line,
                "column": column,
            }
        )
    return out


result = {"crashed": frames(prog.crashed_thread().stack_trace()), "tasks": {}}
for task in for_each_task(prog):
    entry = {
        "pid": task.pid.value_(),
        "comm": task.comm.string_().decode(errors="replace"),
        "on_cpu": bool(task.on_cpu.value_()),
    }
    try:
        entry["frames"] = frames(prog.stack_trace(task))
    except Exception as e:  # noqa: BLE001 - say why, the test shows it
        entry["error"] = str(e)
    result["tasks"][hex(task.value_())] = entry
json.dump(result, sys.stdout)
