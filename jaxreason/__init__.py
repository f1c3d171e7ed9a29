"""jaxreason: read and edit the internals of language models that reason step by step."""

__version__ = "0.1.0"
