"""piccolo configuration of the prompt service: its own database, its own app."""

from piccolo.conf.apps import AppRegistry

from contracts.runtime.database import piccolo_engine

DB = piccolo_engine("prompt")
APP_REGISTRY = AppRegistry(apps=["prompt_service.piccolo_app"])
