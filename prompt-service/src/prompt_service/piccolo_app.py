from contracts.runtime.database import piccolo_app
from prompt_service.tables import TABLES

APP_CONFIG = piccolo_app("prompt", __file__, TABLES)
