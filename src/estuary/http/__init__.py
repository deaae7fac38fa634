"""The ASGI application: thin routes over the gateway for the OpenAI API, the app API and health."""

from estuary.http.app import Services, create_app

__all__ = ["Services", "create_app"]
