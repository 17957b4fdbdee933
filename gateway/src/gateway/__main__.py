"""`python -m gateway`: run one replica of the service."""

from contracts.runtime.service import run_main
from gateway import SERVICE

if __name__ == "__main__":
    run_main(SERVICE, "gateway.app")
