"""Tables of the gateway service (piccolo). Only this service reads or writes them.

The service's own tables arrive with its feature work (issue 9); until then the database holds
piccolo's migration log, created and filled by the initial migration at start.
"""

from piccolo.table import Table

TABLES: list[type[Table]] = []
