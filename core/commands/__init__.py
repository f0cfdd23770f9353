"""CLI sub-commands: one module per area, each with ``register(subparsers)``.

A registered parser sets ``func=callable(args) -> int``. Errors derived from ``StudioError`` are
printed to stderr (no traceback) with exit status 2 by ``core.cli``.
"""

COMMAND_MODULES = [
    "core.commands.data",
    "core.commands.models",
    "core.commands.train",
    "core.commands.generate",
    "core.commands.estimate",
    "core.commands.explore",
]
