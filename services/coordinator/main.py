"""Entry point of the coordinator: `agentforge serve coordinator` or `python -m services.coordinator.main`."""

from shared.rpc.serve import main_for_service


def main() -> int:
    return main_for_service("coordinator")


if __name__ == "__main__":
    raise SystemExit(main())
