"""The gateway: the ASGI app behind the one OpenAI-compatible port."""

from modelyard.gateway.app import create_app

__all__ = ["create_app"]
