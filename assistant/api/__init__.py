"""The HTTP API: ``create_app(settings, services=None)`` in ``assistant.api.app`` is the composition root.

Errors become JSON ``{"code": ..., "detail": ...}`` with a precise 4xx status (see ``errors``); an
answering failure becomes an escalation reply, never a 500. ``ApiError`` is the one exception tree:
routers raise its subclasses, the handlers in ``errors`` render them.
"""
