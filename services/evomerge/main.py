"""Entry point of the evomerge service: `agentforge serve evomerge` or `python -m services.evomerge.main`."""

from shared.rpc.serve import main_for_service


def main() -> int:
    return main_for_service("evomerge")


if __name__ == "__main__":
    raise SystemExit(main())
