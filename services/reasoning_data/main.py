"""Entry point of the reasoning_data service: `agentforge serve reasoning-data` or `python -m services.reasoning_data.main`."""

from shared.rpc.serve import main_for_service


def main() -> int:
    return main_for_service("reasoning_data")


if __name__ == "__main__":
    raise SystemExit(main())
