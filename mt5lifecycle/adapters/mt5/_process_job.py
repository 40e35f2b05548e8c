"""Windows: the workers end with their parent, even one stuck in a call that never returns.

Each worker watches its parent itself (:mod:`._process_worker`), but only while its
interpreter can run a thread; the ``MetaTrader5`` package's native calls hold the GIL,
so a worker stuck in one would outlive a parent that died meanwhile. On Windows, every
worker is put in one job object that the kernel ends with its last handle, held by this
process only and never closed by hand: when this process ends, however it ends, so do
the workers. ``SILENT_BREAKAWAY_OK`` leaves the processes a worker starts (the
``terminal64.exe`` that ``initialize(path)`` launches) out of the job: a terminal must
outlive its worker, as it does when a worker is ended at its deadline.

Elsewhere :func:`contain` does nothing. A failure to make or join the job is logged
and lived with: the parent-watching thread still covers every call that lets it run.
"""

from __future__ import annotations

import logging
import sys
import threading

__all__ = ["contain"]

log = logging.getLogger("mt5lifecycle.adapters.mt5.process")

if sys.platform == "win32":
    import ctypes
    from ctypes import wintypes

    _JOB_OBJECT_LIMIT_SILENT_BREAKAWAY_OK = 0x1000
    _JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x2000
    _JOB_OBJECT_EXTENDED_LIMIT_INFORMATION = 9
    _PROCESS_TERMINATE = 0x0001
    _PROCESS_SET_QUOTA = 0x0100

    class _BasicLimits(ctypes.Structure):
        _fields_ = [
            ("PerProcessUserTimeLimit", ctypes.c_int64),
            ("PerJobUserTimeLimit", ctypes.c_int64),
            ("LimitFlags", wintypes.DWORD),
            ("MinimumWorkingSetSize", ctypes.c_size_t),
            ("MaximumWorkingSetSize", ctypes.c_size_t),
            ("ActiveProcessLimit", wintypes.DWORD),
            ("Affinity", ctypes.c_size_t),
            ("PriorityClass", wintypes.DWORD),
            ("SchedulingClass", wintypes.DWORD),
        ]

    class _IoCounters(ctypes.Structure):
        _fields_ = [
            ("ReadOperationCount", ctypes.c_uint64),
            ("WriteOperationCount", ctypes.c_uint64),
            ("OtherOperationCount", ctypes.c_uint64),
            ("ReadTransferCount", ctypes.c_uint64),
            ("WriteTransferCount", ctypes.c_uint64),
            ("OtherTransferCount", ctypes.c_uint64),
        ]

    class _ExtendedLimits(ctypes.Structure):
        _fields_ = [
            ("BasicLimitInformation", _BasicLimits),
            ("IoInfo", _IoCounters),
            ("ProcessMemoryLimit", ctypes.c_size_t),
            ("JobMemoryLimit", ctypes.c_size_t),
            ("PeakProcessMemoryUsed", ctypes.c_size_t),
            ("PeakJobMemoryUsed", ctypes.c_size_t),
        ]

    _kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    _kernel32.CreateJobObjectW.argtypes = [ctypes.c_void_p, wintypes.LPCWSTR]
    _kernel32.CreateJobObjectW.restype = wintypes.HANDLE
    _kernel32.SetInformationJobObject.argtypes = [
        wintypes.HANDLE,
        ctypes.c_int,
        ctypes.c_void_p,
        wintypes.DWORD,
    ]
    _kernel32.SetInformationJobObject.restype = wintypes.BOOL
    _kernel32.AssignProcessToJobObject.argtypes = [wintypes.HANDLE, wintypes.HANDLE]
    _kernel32.AssignProcessToJobObject.restype = wintypes.BOOL
    _kernel32.OpenProcess.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.DWORD]
    _kernel32.OpenProcess.restype = wintypes.HANDLE
    _kernel32.CloseHandle.argtypes = [wintypes.HANDLE]
    _kernel32.CloseHandle.restype = wintypes.BOOL

    _lock = threading.Lock()
    _job: int | None = None
    _job_failed = False

    def _the_job() -> int | None:
        global _job, _job_failed
        with _lock:
            if _job is not None or _job_failed:
                return _job
            handle = _kernel32.CreateJobObjectW(None, None)
            if not handle:
                _job_failed = True
                log.warning("cannot create a job object: error %d", ctypes.get_last_error())
                return None
            limits = _ExtendedLimits()
            limits.BasicLimitInformation.LimitFlags = (
                _JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE | _JOB_OBJECT_LIMIT_SILENT_BREAKAWAY_OK
            )
            if not _kernel32.SetInformationJobObject(
                handle,
                _JOB_OBJECT_EXTENDED_LIMIT_INFORMATION,
                ctypes.byref(limits),
                ctypes.sizeof(limits),
            ):
                _job_failed = True
                log.warning("cannot configure a job object: error %d", ctypes.get_last_error())
                _kernel32.CloseHandle(handle)
                return None
            _job = int(handle)
            return _job

    def contain(pid: int) -> None:
        """Put the worker ``pid`` in this process's job: it ends when this process ends."""
        job = _the_job()
        if job is None:
            return
        process = _kernel32.OpenProcess(_PROCESS_SET_QUOTA | _PROCESS_TERMINATE, False, pid)
        if not process:
            log.warning("cannot open worker %d: error %d", pid, ctypes.get_last_error())
            return
        try:
            if not _kernel32.AssignProcessToJobObject(job, process):
                log.warning(
                    "cannot put worker %d in the job: error %d", pid, ctypes.get_last_error()
                )
        finally:
            _kernel32.CloseHandle(process)

else:

    def contain(pid: int) -> None:
        """Nothing to do here: the worker's own watch of its parent covers POSIX."""
