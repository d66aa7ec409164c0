"""Tidedesk: the shared package of chat nodes, routers and the control plane.

It holds what more than one process needs: settings, the wire format, the storage models and
the two narrow seams (broker and session store) with their embedded implementations.
"""

__version__ = "0.1.0"
