"""poolgrad's gradient-compute service: FastAPI over the NumPy engine, sessions in a store.

Build it with :func:`create_app`; run it with ``python -m service`` or ``poolgrad-server``.
Endpoints (:mod:`service.routes`) do HTTP only and delegate to :class:`service.compute.Compute`,
which runs the engine off the event loop against a :class:`service.stores.SessionStore`.
"""

from service.app import create_app
from service.settings import Settings

__all__ = ["Settings", "create_app"]
