from contracts.runtime.database import piccolo_app
from dispatch_service.tables import TABLES

APP_CONFIG = piccolo_app("dispatch", __file__, TABLES)
