"""`python -m prompt_service`: run one replica of the service."""

from contracts.runtime.service import run_main
from prompt_service import SERVICE

if __name__ == "__main__":
    run_main(SERVICE, "prompt_service.app")
