"""ui service: admin web interface."""

import os

__version__ = "0.1.0"
SERVICE = "ui"

# piccolo finds its engine through PICCOLO_CONF; point it at this service's own database before any
# table is imported (each service runs in its own process).
os.environ["PICCOLO_CONF"] = "ui_service.piccolo_conf"
