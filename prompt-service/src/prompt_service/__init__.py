"""prompt_service."""
