"""Tables of the ui service (piccolo). Only this service reads or writes them."""

from piccolo.columns import Text, Timestamptz, Varchar
from piccolo.table import Table


class AdminAccount(Table, tablename="admin_account"):
    """The admin who may sign in; the password is kept only as a salted scrypt hash."""

    username = Varchar(length=64, unique=True)
    password_hash = Text()
    created_at = Timestamptz()
    updated_at = Timestamptz()


TABLES: list[type[Table]] = [AdminAccount]
