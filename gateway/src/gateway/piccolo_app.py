from contracts.runtime.database import piccolo_app
from gateway.tables import TABLES

APP_CONFIG = piccolo_app("gateway", __file__, TABLES)
