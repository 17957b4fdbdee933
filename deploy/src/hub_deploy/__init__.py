"""hub_deploy."""
