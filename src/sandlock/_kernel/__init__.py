"""Thin ctypes wrappers over kernel facilities. No policy knowledge here."""
