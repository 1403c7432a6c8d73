#!/bin/sh
# Create the reference SDK's virtualenv where the harness looks for it by
# default (benchmarks/ref.py): the reference implementation's Python SDK,
# sandlock 0.9.0 from PyPI, in its own venv so it never meets this
# repository's sandlock.  Usage: sh benchmarks/make_ref_venv.sh [DIR]
# (default /tmp/refvenv; pass another DIR with --ref-python DIR/bin/python).
set -eu
dir=${1:-/tmp/refvenv}
python3 -m venv "$dir"
"$dir/bin/pip" install -q --disable-pip-version-check "sandlock==0.9.0"
"$dir/bin/python" -I -c "import importlib.metadata as m; print('reference SDK', m.version('sandlock'), 'in', '$dir')"
