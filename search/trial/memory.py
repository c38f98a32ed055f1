"""How much host memory this process can still use, measured before a large allocation.

A request that cannot fit (a dataset at a huge ``image_size``) is refused with the figures
instead of failing inside the allocator with a traceback, or swapping the machine to a halt.
"""

from __future__ import annotations

from pathlib import Path

_MEMINFO = Path("/proc/meminfo")
_CGROUP = Path("/sys/fs/cgroup")


def available_host_memory() -> int | None:
    """Bytes of host memory available to this process, or None where it cannot be told.

    Linux's ``MemAvailable`` (free memory plus what the kernel can reclaim), capped by the
    room left under a cgroup v2 memory limit (a container's ``--memory``).
    """
    try:
        lines = _MEMINFO.read_text().splitlines()
    except OSError:
        return None
    available = next((int(line.split()[1]) * 1024 for line in lines if line.startswith("MemAvailable:")), None)
    if available is None:
        return None
    try:
        limit = (_CGROUP / "memory.max").read_text().strip()
        used = int((_CGROUP / "memory.current").read_text())
    except (OSError, ValueError):
        return available
    return available if limit == "max" else max(0, min(available, int(limit) - used))


def format_bytes(n: int) -> str:
    """``n`` bytes for people: ``16.2 GB``, ``512 B`` (powers of 1000, up to TB)."""
    units = ("B", "kB", "MB", "GB", "TB")
    value, unit = float(n), 0
    while value >= 1000 and unit < len(units) - 1:
        value, unit = value / 1000, unit + 1
    return f"{n} B" if unit == 0 else f"{value:.1f} {units[unit]}"
