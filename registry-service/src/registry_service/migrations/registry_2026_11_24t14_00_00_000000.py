from piccolo.apps.migrations.auto.migration_manager import MigrationManager

ID = "2026-11-24T14:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "initial: the registry service's database"


async def forwards() -> MigrationManager:
    return MigrationManager(migration_id=ID, app_name="registry", description=DESCRIPTION)
