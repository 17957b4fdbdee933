from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Integer
from piccolo.columns.indexes import IndexMethod

ID = "2026-12-02T17:30:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "which delivery of its stream message claimed a job: only a later one takes a running job over"

# Rows of running jobs from before get 0: any delivery of their message may still take them over, as before.


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="dispatch", description=DESCRIPTION)
    manager.add_column(
        table_class_name="JobRow",
        tablename="job",
        column_name="delivery",
        db_column_name="delivery",
        column_class_name="Integer",
        column_class=Integer,
        params={
            "default": 0,
            "null": False,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )
    return manager
