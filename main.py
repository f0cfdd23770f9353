"""FineTune Studio from a source checkout: ``python main.py [...]`` is the ``finetune-studio`` command."""

from __future__ import annotations

import sys

from gui.entry import main

if __name__ == "__main__":
    sys.exit(main())
