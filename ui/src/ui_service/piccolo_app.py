from contracts.runtime.database import piccolo_app
from ui_service.tables import TABLES

APP_CONFIG = piccolo_app("ui", __file__, TABLES)
