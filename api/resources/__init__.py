"""Falcon resources: one class per route, collaborators passed to `__init__`."""
