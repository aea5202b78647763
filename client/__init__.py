"""Python SDK: ``Client`` / ``AsyncClient`` speak to a Quiver server with the embedded
database's API (``quiver.connect(path)``), so code moves between the two by changing one line."""

from ._ops import AuthError, ServerUnavailable
from .client import AsyncClient, AsyncRemoteCollection, Client, RemoteCollection

__all__ = ["AsyncClient", "AsyncRemoteCollection", "AuthError", "Client", "RemoteCollection",
           "ServerUnavailable"]
