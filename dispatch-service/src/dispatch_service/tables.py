"""Tables of the dispatch service (piccolo). Only this service reads or writes them."""

from piccolo.columns import JSON, Boolean, Float, Integer, Serial, Text, Varchar
from piccolo.table import Table


class InstanceRow(Table, tablename="instance"):
    id: Serial  # the primary key piccolo adds; declared for type checkers only (no column is created)
    name = Varchar(length=64, unique=True, index=True)
    base_url = Text()
    enabled = Boolean(default=True)
    slots = Integer(default=1)
    weight = Integer(default=100)
    auth_header = Text(null=True, default=None)
    tags = JSON(default=[])
    created_at = Float()
    updated_at = Float()


class JobRow(Table, tablename="job"):
    id: Serial  # the primary key piccolo adds; declared for type checkers only (no column is created)
    job_id = Varchar(length=40, unique=True, index=True)
    status = Varchar(length=16, index=True)
    render_type = Varchar(length=64)
    render_type_version = Integer(default=0)
    output_kind = Varchar(length=16, default="image")
    request = JSON()  # the GenerationRequest as the caller sent it (input image bytes excluded)
    workflow = JSON()  # the resolved ComfyUI API workflow, prompts and seed injected
    requirements = JSON()
    positive_prompt = Text(default="")
    negative_prompt = Text(default="")
    styles = JSON(default=[])
    enhancement_error = Text(null=True, default=None)
    seed = Varchar(length=24, null=True, default=None)  # up to 2**63: text keeps every digit on every database
    width = Integer(null=True, default=None)
    height = Integer(null=True, default=None)
    input_image_id = Varchar(length=40, null=True, default=None)  # in the output storage
    instance = Varchar(length=64, null=True, default=None)
    # The job stream message that runs the job: only a redelivery of that message may take over a running job.
    stream_seq = Integer(null=True, default=None)
    # Which delivery of that message claimed the job (JetStream's num_delivered): only a later one takes it over,
    # so a live replica that stalled past the hand-back of its fetched job cannot claim it after the next one did.
    delivery = Integer(default=0)
    attempts = Integer(default=0)
    failures = JSON(default=[])  # why earlier attempts ended: [{"instance", "reason", "at"}]
    progress_value = Integer(default=0)
    progress_max = Integer(default=0)
    progress_percent = Float(default=0.0)  # of the whole job (progress_value/max are the running node's steps)
    outputs = JSON(default=[])
    error = Text(null=True, default=None)
    api_key_id = Varchar(length=64, null=True, default=None)
    client_name = Varchar(length=128, null=True, default=None)
    accepted_at = Float()
    started_at = Float(null=True, default=None)
    finished_at = Float(null=True, default=None)


TABLES: list[type[Table]] = [InstanceRow, JobRow]
