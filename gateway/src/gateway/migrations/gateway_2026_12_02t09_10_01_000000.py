from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.table import Table

ID = "2026-12-02T09:10:01:000000"
VERSION = "1.38.0"
DESCRIPTION = "the callback deliveries recorded so far move to webhook_deliveries (one row per webhook of a job)"

COLUMNS = "job_id, key_id, url, created_at, attempts, last_status, last_error, delivered_at, gave_up_at, progress, last_seq"


class _Old(Table, tablename="webhook_delivery"):
    pass


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="gateway", description=DESCRIPTION)

    async def copy_rows() -> None:
        # delivery_id as gateway.webhooks.delivery_id names a callback's delivery; the raw step runs before the drop.
        await _Old.raw(
            f"INSERT INTO webhook_deliveries (delivery_id, source, {COLUMNS}) "
            f"SELECT job_id || ' callback', 'callback', {COLUMNS} FROM webhook_delivery"
        )

    manager.add_raw(copy_rows)
    manager.drop_table(class_name="WebhookRow", tablename="webhook_delivery", schema=None)
    return manager
