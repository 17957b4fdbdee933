"""`python -m stats_service`: run one replica of the service."""

from contracts.runtime.service import run_main
from stats_service import SERVICE

if __name__ == "__main__":
    run_main(SERVICE, "stats_service.app")
