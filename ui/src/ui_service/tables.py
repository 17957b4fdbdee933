"""Tables of the ui service (piccolo). Only this service reads or writes them."""

from piccolo.columns import Integer, Text, Timestamptz, Varchar
from piccolo.table import Table


class AdminAccount(Table, tablename="admin_account"):
    """The admin who may sign in; the password is kept only as a salted scrypt hash."""

    username = Varchar(length=64, unique=True)
    password_hash = Text()
    created_at = Timestamptz()
    updated_at = Timestamptz()
    # Wrong passwords given for this account since its last sign-in: shown to the admin at the next one.
    failed_sign_ins = Integer(default=0)
    last_failed_sign_in_at = Timestamptz(null=True, default=None)
    last_failed_sign_in_from = Varchar(length=200, default="")


class SignInFailures(Table, tablename="sign_in_failures"):
    """Failed sign-ins in a row of one client address (`client:<address>`) or one user name (`account:<name>`):
    what delays and then locks password guessing. In the database, so every UI replica and a restarted UI agree."""

    key = Varchar(length=300, unique=True)
    failures = Integer(default=0)
    last_failure_at = Timestamptz()
    blocked_until = Timestamptz()


TABLES: list[type[Table]] = [AdminAccount, SignInFailures]
