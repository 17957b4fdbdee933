from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Integer
from piccolo.columns.indexes import IndexMethod

ID = "2026-12-02T09:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "api key fair-share weight"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="gateway", description=DESCRIPTION)
    for column in ("weight",):
        manager.add_column(
            table_class_name="ApiKeyRow",
            tablename="api_key",
            column_name=column,
            db_column_name=column,
            column_class_name="Integer",
            column_class=Integer,
            params={
                "default": None,
                "null": True,
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
