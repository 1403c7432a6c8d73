"""python -m sandlock.mcp: the sandlock-mcp command."""
import sys

from .server import main

sys.exit(main())
