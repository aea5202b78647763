"""The REST routes, one module per resource, so each reads on its own. Each module's
``register(app, ctx)`` adds its routes to the app as closures over the app's
``ServerContext``; ``ROUTES`` is the order they are added (and matched) in."""

from __future__ import annotations

from . import aliases, collections, points, query, search, service, snapshots

ROUTES = (service, aliases, collections, points, search, query, snapshots)
