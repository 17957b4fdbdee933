from piccolo.apps.migrations.auto.migration_manager import MigrationManager

from dispatch_service.tables import JobRow

ID = "2026-12-02T10:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "index on the start of jobs, for fair share's window of recent run time"

# Fair share reads, at each placement, the run time of the jobs that started in its window (store.run_time_since):
# with the index that is the window's rows, not the whole job history. Plain SQL, the same on SQLite and PostgreSQL.
NAME = "job_started_at"


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="dispatch", description=DESCRIPTION)

    async def create_index() -> None:
        await JobRow.raw(f"CREATE INDEX IF NOT EXISTS {NAME} ON job (started_at)")

    async def drop_index() -> None:
        await JobRow.raw(f"DROP INDEX IF EXISTS {NAME}")

    manager.add_raw(create_index)
    manager.add_raw_backwards(drop_index)
    return manager
