"""The studio's pages; the window lists them in gui.main_window.PAGES."""
