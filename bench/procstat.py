"""CPU and memory of processes and of the machine, read from /proc (no psutil)."""

from __future__ import annotations

import os

__all__ = ["CLK_TCK", "proc_cpu", "proc_rss_kb", "proc_sys", "system_busy"]

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rpartition(")")[2].split()


def proc_cpu(pid: int) -> float:
    """utime + stime of ``pid`` in seconds."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_sys(pid: int) -> float:
    """stime of ``pid`` in seconds (on loopback it includes the receiver's TCP work)."""
    return int(_stat_fields(pid)[12]) / CLK_TCK


def proc_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def system_busy() -> float:
    """Busy CPU seconds of the whole machine so far (all cores)."""
    with open("/proc/stat") as fh:
        parts = fh.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in parts[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK
