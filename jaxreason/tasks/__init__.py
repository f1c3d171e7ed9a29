"""Data families. Each task module builds a :class:`jaxreason.data.TokenDataset` from a seed
and its own arguments and registers the builder in :data:`jaxreason.registry.TASKS` under the
name configs use as ``data.source`` (built by :func:`jaxreason.data.build_dataset`)."""
