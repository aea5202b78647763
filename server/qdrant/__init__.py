"""Qdrant's REST dialect: the request bodies ``qdrant-client`` sends that Quiver's own schema
does not already read (``schemas``), and the translation between them and the engine
(``collections`` for collection configs and infos, ``query`` for searches and their answers).

The routes stay in ``server/routes``: where a path is shared, one route reads both dialects.
"""
