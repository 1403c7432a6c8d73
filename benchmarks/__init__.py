"""sandlock benchmarks: run each workload unsandboxed and sandboxed, print medians.

Entry point: ``python -m benchmarks`` from the repository root (see README.md).
Nothing here asserts speed; the numbers are only printed (and optionally
written as JSON).
"""
