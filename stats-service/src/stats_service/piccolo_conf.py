"""piccolo configuration of the stats service: its own database, its own app."""

from piccolo.conf.apps import AppRegistry

from contracts.runtime.database import piccolo_engine

DB = piccolo_engine("stats")
APP_REGISTRY = AppRegistry(apps=["stats_service.piccolo_app"])
