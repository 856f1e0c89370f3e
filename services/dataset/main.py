"""Entry point of the dataset service: `agentforge serve dataset` or `python -m services.dataset.main`."""

from shared.rpc.serve import main_for_service


def main() -> int:
    return main_for_service("dataset")


if __name__ == "__main__":
    raise SystemExit(main())
