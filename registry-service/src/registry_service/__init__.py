"""registry service: render types and comfyui workflows."""

import os

__version__ = "0.1.0"
SERVICE = "registry"

# piccolo finds its engine through PICCOLO_CONF; point it at this service's own database before any
# table is imported (each service runs in its own process).
os.environ["PICCOLO_CONF"] = "registry_service.piccolo_conf"
