"""`python -m ui_service`: run one replica of the service."""

from contracts.runtime.service import run_main
from ui_service import SERVICE

if __name__ == "__main__":
    run_main(SERVICE, "ui_service.app")
