"""piccolo configuration of the ui service: its own database, its own app."""

from piccolo.conf.apps import AppRegistry

from contracts.runtime.database import piccolo_engine

DB = piccolo_engine("ui")
APP_REGISTRY = AppRegistry(apps=["ui_service.piccolo_app"])
