"""piccolo configuration of the dispatch service: its own database, its own app."""

from piccolo.conf.apps import AppRegistry

from contracts.runtime.database import piccolo_engine

DB = piccolo_engine("dispatch")
APP_REGISTRY = AppRegistry(apps=["dispatch_service.piccolo_app"])
