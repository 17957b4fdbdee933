from contracts.runtime.database import piccolo_app
from registry_service.tables import TABLES

APP_CONFIG = piccolo_app("registry", __file__, TABLES)
