from contracts.runtime.database import piccolo_app
from stats_service.tables import TABLES

APP_CONFIG = piccolo_app("stats", __file__, TABLES)
