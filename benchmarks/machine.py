"""What the numbers were measured on."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for line in text.splitlines():
            if line.split(":")[0].strip() == key and ":" in line:
                return line.split(":", 1)[1].strip()
    try:  # aarch64 /proc/cpuinfo has no model name; lscpu knows the part
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except Exception:  # noqa: BLE001
        pass
    return platform.processor() or platform.machine() or "unknown"


def load_average() -> str:
    """1/5/15-minute load average: other work on the machine skews the medians."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _git_rev(repo: Path) -> str | None:
    try:
        rev = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except Exception:  # noqa: BLE001
        return None


def describe() -> dict:
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    info = {
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "load_average": load_average(),
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
    }
    try:
        import sandlock
        info["sandlock"] = f"{getattr(sandlock, '__version__', '?')} ({Path(sandlock.__file__).parent})"
        try:
            info["landlock_abi"] = sandlock.landlock_abi_version()
        except Exception as e:  # noqa: BLE001
            info["landlock_abi"] = f"unknown ({e})"
        rev = _git_rev(Path(sandlock.__file__).parent)
        if rev:
            info["sandlock_git"] = rev
    except Exception as e:  # noqa: BLE001
        info["sandlock"] = f"not importable: {e}"
    return info
