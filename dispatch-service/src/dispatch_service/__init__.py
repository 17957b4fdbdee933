"""dispatch_service."""
