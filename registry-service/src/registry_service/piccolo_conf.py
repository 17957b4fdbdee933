"""piccolo configuration of the registry service: its own database, its own app."""

from piccolo.conf.apps import AppRegistry

from contracts.runtime.database import piccolo_engine

DB = piccolo_engine("registry")
APP_REGISTRY = AppRegistry(apps=["registry_service.piccolo_app"])
