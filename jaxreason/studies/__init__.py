"""Reproduced studies, each built only from the core, training and probe pieces."""
