"""Packaging: desktop files, the sdist and wheel, clean installs, the PyInstaller bundle."""
