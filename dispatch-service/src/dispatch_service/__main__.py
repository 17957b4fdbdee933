"""`python -m dispatch_service`: run one replica of the service."""

from contracts.runtime.service import run_main
from dispatch_service import SERVICE

if __name__ == "__main__":
    run_main(SERVICE, "dispatch_service.app")
