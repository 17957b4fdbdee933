"""`python -m registry_service`: run one replica of the service."""

from contracts.runtime.service import run_main
from registry_service import SERVICE

if __name__ == "__main__":
    run_main(SERVICE, "registry_service.app")
