"""Reusable input widgets: sizes, paths, UUIDs."""
