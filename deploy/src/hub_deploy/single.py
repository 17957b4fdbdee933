"""`python -m hub_deploy.single`: every service of the hub in this one process (`HUB_LAYOUT=single`, what
`./hub start` runs by default), each still with its own settings, NATS connection and database, talking over NATS
as separate processes do. The launcher (`python -m hub_deploy up`) supervises it like any service process."""

from __future__ import annotations

from contracts.runtime.service import run_together
from hub_deploy.services import SERVICES


def main() -> None:
    # Each service's `python -m <module>` entry point runs `<module>.app` (see its __main__.py); so does this.
    run_together([(name, f"{module}.app") for name, module in SERVICES])


if __name__ == "__main__":
    main()
