"""Red-team attack on `sandlock learn`: the learned program writes the profile.

The notes of a learned profile are `#` comments, and they name paths the
program chose (a write refused while learning, a collapse, a path left
out). A path holding a line break ended the comment: a program that tried
to create `/nonexistent/x\\n[network]\\nallow = ["*"]\\n#` got
`allow = ["*"]` and `allow_bind = ["*"]` into the profile its user then
runs it under. The control shows what that text does as a plain comment.
"""
from __future__ import annotations

import os
import subprocess
import sys

from sandlock import profiles

EVIL = '/nonexistent-dir/x\n[network]\nallow = ["*"]\nallow_bind = ["*"]\n#'
ESC = "/nonexistent-dir/\x1b[2Jesc"   # a terminal escape: invalid in TOML, learn failed


def _code(path: str) -> str:
    return f"try:\n    open({path!r}, 'w')\nexcept OSError:\n    pass\nprint('ok')\n"


def _learn(wdir: str, path: str) -> tuple[str, str]:
    out = os.path.join(wdir, "p.toml")
    cwd = os.path.join(wdir, "proj")
    os.makedirs(cwd, exist_ok=True)
    os.chmod(cwd, 0o777)
    p = subprocess.run([sys.executable, "-m", "sandlock", "learn", "-o", out, "--",
                        sys.executable, "-I", "-S", "-c", _code(path)],
                       capture_output=True, cwd=cwd, timeout=120,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    with open(out) as f:
        return f.read(), p.stderr.decode()


def test_learned_notes_cannot_add_keys(wdir):
    # control: the path as a bare comment line does add the keys
    control = profiles.parse_profile(f"# note: the write to {EVIL} was refused\n")
    assert control.data["network"]["allow"] == ["*"]

    text, _err = _learn(wdir, EVIL)
    learned = profiles.parse_profile(text)
    assert "network" not in learned.data, text
    # the note is still there, escaped, on one line
    assert any(line.startswith("# note:") and "\\n[network]" in line for line in text.splitlines())


def test_learned_notes_with_control_characters(wdir):
    text, err = _learn(wdir, ESC)
    assert "\x1b" not in text and "\x1b" not in err
    assert "\\x1b[2Jesc" in text
