from piccolo.apps.migrations.auto.migration_manager import MigrationManager

from dispatch_service.tables import JobRow

ID = "2026-12-02T09:20:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "indexes on the waiting order of jobs, overall and per API key, for queue places"

# Both cover the queue place counts (store.queue_position, key_queue_position, waiting_of): the jobs ahead are counted
# in the index, not read row by row (14 ms at 10,000 waiting, 1 ms with them). Plain SQL, the same on SQLite and
# PostgreSQL; piccolo declares indexes of one column only.
INDEXES = {
    "job_waiting_order": "status, accepted_at, id",
    "job_key_waiting_order": "api_key_id, status, accepted_at, id",
}


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="dispatch", description=DESCRIPTION)

    async def create_indexes() -> None:
        for name, columns in INDEXES.items():
            await JobRow.raw(f"CREATE INDEX IF NOT EXISTS {name} ON job ({columns})")

    async def drop_indexes() -> None:
        for name in INDEXES:
            await JobRow.raw(f"DROP INDEX IF EXISTS {name}")

    manager.add_raw(create_indexes)
    manager.add_raw_backwards(drop_indexes)
    return manager
