"""Index layer: metrics, codecs, indexes, persistence."""
