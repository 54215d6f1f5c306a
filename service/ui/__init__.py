"""Browser pages served by the gateway (``/ui``): see docs/ui.md."""

from .routes import router

__all__ = ["router"]
