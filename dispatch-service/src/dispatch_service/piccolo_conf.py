"""piccolo configuration of the dispatch service: its own database, its own app."""

from piccolo.conf.apps import AppRegistry

from contracts.runtime.database import own_tables, piccolo_engine

DB = piccolo_engine("dispatch")
APP_REGISTRY = AppRegistry(apps=["dispatch_service.piccolo_app"])
own_tables(DB, APP_REGISTRY, __name__)  # these tables use DB even when other services share the process
