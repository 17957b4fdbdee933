"""piccolo configuration of the gateway service: its own database, its own app."""

from piccolo.conf.apps import AppRegistry

from contracts.runtime.database import piccolo_engine

DB = piccolo_engine("gateway")
APP_REGISTRY = AppRegistry(apps=["gateway.piccolo_app"])
