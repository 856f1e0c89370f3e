"""Entry point of the bitnet service: `agentforge serve bitnet` or `python -m services.bitnet.main`."""

from shared.rpc.serve import main_for_service


def main() -> int:
    return main_for_service("bitnet")


if __name__ == "__main__":
    raise SystemExit(main())
