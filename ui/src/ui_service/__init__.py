"""ui_service."""
