"""Helpers shared by the PyTorch reference scripts of the benchmarks (model_reference.py,
train_reference.py): logging to stderr and the process's resident-memory figures."""

import resource
import sys


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


def proc_status_kib(field):
    """A `kB` field of /proc/self/status (VmHWM, VmRSS) in bytes, or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def ru_maxrss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def reset_peak_rss():
    """Reset the RSS high-water mark (VmHWM and ru_maxrss both follow it); False when not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
