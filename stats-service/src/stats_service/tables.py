"""Tables of the stats service (piccolo). Only this service reads or writes them."""

from piccolo.columns import JSON, BigInt, Boolean, Float, Integer, Serial, Text, Varchar
from piccolo.table import Table


class GenerationRow(Table, tablename="generation"):
    """One row per job, merged from its generation events (see `merge.py` for the rules)."""

    id: Serial  # the primary key piccolo adds; declared for type checkers only (no column is created)

    job_id = Varchar(length=128, unique=True, index=True)
    status = Varchar(length=16, index=True)
    status_seq = BigInt(default=0)  # seq of the event that set `status`: an older event never overrides it
    logged_at = Float(index=True)  # the earliest event time seen: time filters, ordering, retention age
    updated_at = Float()
    has_request = Boolean(default=False)  # the `accepted` event (prompt, styles, seed, ...) was recorded
    render_type = Varchar(length=128, default="", index=True)
    prompt = Text(default="")
    positive_prompt = Text(default="")
    negative_prompt = Text(default="")
    styles = JSON(default=[])
    instance = Varchar(length=128, null=True, default=None, index=True)
    instance_seq = BigInt(default=0)
    seed = BigInt(null=True, default=None)
    width = Integer(null=True, default=None)
    height = Integer(null=True, default=None)
    api_key_id = Varchar(length=128, null=True, default=None, index=True)
    client_name = Varchar(length=128, null=True, default=None)
    error = Text(null=True, default=None)
    enhancement_error = Text(null=True, default=None)
    attempts = Integer(default=0)
    retry_reasons = JSON(default=[])
    # What the events said, kept apart so a late event can be merged correctly:
    seen_accepted_at = Float(null=True, default=None)
    seen_started_at = Float(null=True, default=None)
    seen_started_seq = BigInt(default=0)
    seen_finished_at = Float(null=True, default=None)
    final_timings = JSON(null=True, default=None)
    # Derived from the above on every change:
    accepted_at = Float(null=True, default=None)
    started_at = Float(null=True, default=None)
    finished_at = Float(null=True, default=None)
    queue_wait_ms = Float(null=True, default=None)
    run_ms = Float(null=True, default=None)
    outputs = JSON(default=[])
    output_count = Integer(default=0)
    bytes_out = BigInt(default=0)
    # The time the job spent loading models its instance did not hold (JobCompleted.model_switch_ms); NULL: none.
    model_switch_ms = Float(null=True, default=None)
    images_removed = Boolean(default=False, index=True)
    images_removed_at = Float(null=True, default=None)


class RetentionRow(Table, tablename="retention"):
    """The retention policy (a single row) and the outcome of its last run."""

    id: Serial  # the primary key piccolo adds; declared for type checkers only (no column is created)

    keep_images_days = Integer(default=30)
    keep_log_days = Integer(default=365)
    run_every_hours = Float(default=6.0)
    updated_at = Float(null=True, default=None)
    last_run_at = Float(null=True, default=None)  # claimed when a run starts, so replicas do not run it twice
    last_report = JSON(null=True, default=None)


TABLES: list[type[Table]] = [GenerationRow, RetentionRow]
