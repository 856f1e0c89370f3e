"""Entry point of the quietstar service: `agentforge serve quietstar` or `python -m services.quietstar.main`."""

from shared.rpc.serve import main_for_service


def main() -> int:
    return main_for_service("quietstar")


if __name__ == "__main__":
    raise SystemExit(main())
