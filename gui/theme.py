"""Light and dark themes that follow the system colour scheme; style sheets and icons are package data."""

from __future__ import annotations

import atexit
import re
from contextlib import ExitStack
from importlib.resources import as_file, files
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QFont, QGuiApplication, QIcon, QPalette
from PySide6.QtWidgets import QApplication

# Files extracted from a zipped install (importlib.resources.as_file) must outlive every QIcon using them.
_EXTRACTED = ExitStack()
atexit.register(_EXTRACTED.close)


def resource_file(relative: str) -> Path | None:
    """A real file path for package data ``relative`` (e.g. "icons/data.svg"), or None when it is missing.

    Qt needs file paths, so a resource inside a zip is extracted once and kept until the app exits.
    """
    item = files("resources").joinpath(*relative.split("/"))
    if not item.is_file():
        return None
    if isinstance(item, Path):
        return item
    return _EXTRACTED.enter_context(as_file(item))

# Colours the pages use outside style sheets (plots, the token view); indexed by theme name.
COLORS = {
    "light": {
        "trained_bg": "#cfe8d4", "masked_bg": "#eceff3", "trained_fg": "#14532d", "masked_fg": "#5d6778",
        "plot_bg": "#ffffff", "plot_fg": "#3a4456", "bar": "#8fb0ec", "bar_over": "#e8a29a", "line": "#c0392b",
        "accent": "#4f7fd9",
    },
    "dark": {
        "trained_bg": "#24513a", "masked_bg": "#2c313b", "trained_fg": "#d5f5df", "masked_fg": "#a6aebb",
        "plot_bg": "#1b1e25", "plot_fg": "#c5ccd8", "bar": "#5d86d6", "bar_over": "#b8625a", "line": "#ff7b6b",
        "accent": "#6f9cf0",
    },
}


def icon(name: str) -> QIcon:
    """An icon from resources/icons/<name>.svg (an empty icon when missing)."""
    path = resource_file(f"icons/{name}.svg")
    return QIcon(str(path)) if path is not None else QIcon()


def app_icon() -> QIcon:
    path = resource_file("app_icon.svg")
    return QIcon(str(path)) if path is not None else QIcon()


def style_sheet(theme: str) -> str:
    """The style sheet for ``theme`` with each ``url(@RESOURCES@/...)`` pointing at the real file.

    url() in a style sheet is relative to the working directory, so every reference is made absolute.
    """
    sheet = files("resources").joinpath(f"style_{theme}.qss")
    text = sheet.read_text(encoding="utf-8") if sheet.is_file() else ""

    def absolute(match: re.Match) -> str:
        path = resource_file(match.group(1))
        return f"url({path.as_posix()})" if path is not None else "url()"

    return re.sub(r"url\(@RESOURCES@/([^)]+)\)", absolute, text)


def system_theme() -> str:
    """"dark" or "light", from the platform's colour scheme (light when unknown)."""
    app = QGuiApplication.instance()
    if app is None:
        return "light"
    scheme = app.styleHints().colorScheme()
    if scheme == Qt.ColorScheme.Dark:
        return "dark"
    if scheme == Qt.ColorScheme.Light:
        return "light"
    # Unknown (e.g. offscreen): fall back on the palette's window lightness.
    return "dark" if app.palette().color(QPalette.ColorRole.Window).lightness() < 128 else "light"


def current_theme() -> str:
    app = QApplication.instance()
    return (app.property("studioTheme") if app is not None else None) or "light"


def colors() -> dict[str, str]:
    """The colour table of the active theme."""
    return COLORS[current_theme()]


def _palette(theme: str) -> QPalette:
    pal = QPalette()
    if theme == "dark":
        roles = {
            QPalette.ColorRole.Window: "#1e2128", QPalette.ColorRole.WindowText: "#e3e7ee",
            QPalette.ColorRole.Base: "#1b1e25", QPalette.ColorRole.AlternateBase: "#232730",
            QPalette.ColorRole.Text: "#e3e7ee", QPalette.ColorRole.Button: "#2a2f39",
            QPalette.ColorRole.ButtonText: "#e3e7ee", QPalette.ColorRole.Highlight: "#4f7fd9",
            QPalette.ColorRole.HighlightedText: "#ffffff", QPalette.ColorRole.ToolTipBase: "#2a2f39",
            QPalette.ColorRole.ToolTipText: "#e3e7ee", QPalette.ColorRole.PlaceholderText: "#7c8595",
        }
    else:
        roles = {
            QPalette.ColorRole.Window: "#f6f7f9", QPalette.ColorRole.WindowText: "#1f2633",
            QPalette.ColorRole.Base: "#ffffff", QPalette.ColorRole.AlternateBase: "#f5f7fa",
            QPalette.ColorRole.Text: "#1f2633", QPalette.ColorRole.Button: "#ffffff",
            QPalette.ColorRole.ButtonText: "#1f2633", QPalette.ColorRole.Highlight: "#4f7fd9",
            QPalette.ColorRole.HighlightedText: "#ffffff", QPalette.ColorRole.ToolTipBase: "#ffffff",
            QPalette.ColorRole.ToolTipText: "#1f2633", QPalette.ColorRole.PlaceholderText: "#8b93a1",
        }
    for role, value in roles.items():
        pal.setColor(role, QColor(value))
    return pal


def apply_theme(app: QApplication, theme: str | None = None) -> str:
    """Apply the Fusion style, a palette and the style sheet for ``theme`` (system theme when None)."""
    theme = theme or system_theme()
    app.setStyle("Fusion")
    app.setPalette(_palette(theme))
    app.setStyleSheet(style_sheet(theme))
    font = app.font()
    if font.pointSizeF() < 10:
        font.setPointSizeF(10)
    app.setFont(font)
    app.setProperty("studioTheme", theme)
    return theme


def follow_system_theme(app: QApplication) -> None:
    """Re-apply the theme whenever the platform switches between light and dark."""
    app.styleHints().colorSchemeChanged.connect(lambda _scheme: apply_theme(app))


def monospace_font() -> QFont:
    font = QFont("monospace")
    font.setStyleHint(QFont.StyleHint.Monospace)
    return font
