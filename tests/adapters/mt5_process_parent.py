"""A parent for the parent-death test: three workers, one stuck in a call, then it waits.

It prints one JSON line once every worker runs and the stuck call is under way, then
blocks until it is killed. Run as ``python mt5_process_parent.py MARK_FILE``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from mt5lifecycle.adapters.mt5_process import ProcessTerminals

FAKE = "mt5lifecycle.testing.fake_mt5_module"


def main(mark: Path) -> None:
    paths = {f"acct-{n}": rf"C:\MT5\acct-{n}\terminal64.exe" for n in range(3)}
    terminals = ProcessTerminals(paths, module=FAKE, call_timeout=120.0)
    for instance_id in paths:
        terminals[instance_id].initialize()
    stuck = terminals["acct-2"]
    stuck.hang_on("terminal_info", entered=str(mark))
    threading.Thread(target=stuck.terminal_info, daemon=True).start()
    deadline = time.monotonic() + 30
    while not mark.exists() and time.monotonic() < deadline:
        time.sleep(0.01)  # polling a real process: the worker says when it is stuck
    pids = {i: terminals.worker_pid(i) for i in paths}
    print(json.dumps({"pids": pids, "stuck": mark.exists()}), flush=True)
    sys.stdin.read()  # until killed


if __name__ == "__main__":
    main(Path(sys.argv[1]))
