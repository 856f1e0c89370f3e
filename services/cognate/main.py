"""Entry point of the cognate service: `agentforge serve cognate` or `python -m services.cognate.main`."""

from shared.rpc.serve import main_for_service


def main() -> int:
    return main_for_service("cognate")


if __name__ == "__main__":
    raise SystemExit(main())
