"""``python -m chiploop_server serve ...`` (the same command as ``chiploop serve``)."""

import sys

from chiploop_server.cli import main

sys.exit(main())
