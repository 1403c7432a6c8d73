"""Standalone timing probe for the *reference* sandlock SDK (optional column).

Run by the harness as ``REF_PYTHON -I _ref_probe.py`` with a JSON request on
stdin; imports only the standard library and whatever ``sandlock`` the
interpreter running it has installed.  Prints one JSON object on stdout:
``{"samples": [seconds, ...], "version": ...}`` or ``{"error": "..."}``.
It times exactly what the harness times for our sandlock:
``Sandbox(fs_readable=...).run(cmd)``, construction included.
"""
import json
import sys
import time


def main() -> int:
    req = json.load(sys.stdin)
    try:
        import sandlock
    except Exception as e:  # noqa: BLE001
        print(json.dumps({"error": f"cannot import sandlock: {e}"}))
        return 0
    samples = []
    first = None
    for i in range(req["warmup"] + req["repeat"]):
        t0 = time.perf_counter()
        r = sandlock.Sandbox(fs_readable=req["readable"]).run(req["cmd"], timeout=120)
        dt = time.perf_counter() - t0
        if first is None:
            first = dt
        if not r.success:
            err = r.error or (r.stderr or b"").decode(errors="replace").strip()[-200:]
            print(json.dumps({"error": f"run failed (exit {r.exit_code}): {err}"}))
            return 0
        if i >= req["warmup"]:
            samples.append(dt)
    version = getattr(sandlock, "__version__", None)
    if version is None:
        try:
            from importlib.metadata import version as _v
            version = _v("sandlock")
        except Exception:  # noqa: BLE001
            version = None
    print(json.dumps({"samples": samples, "first_s": first, "version": version}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
