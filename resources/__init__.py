"""FineTune Studio's package data: icons, style sheets and training presets.

Read them with ``importlib.resources.files("resources")`` (see ``gui.theme.resource_file``), never with a
path built from ``__file__``: an installed wheel keeps them wherever the installer put them.
"""
