"""stats_service."""
