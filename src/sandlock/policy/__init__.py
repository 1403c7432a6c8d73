"""Policy validation and parsing helpers."""
