"""Plugins: the hook specifications (hookspecs.py), the plugin manager and the built-in plugins."""
