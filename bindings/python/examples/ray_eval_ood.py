"""OOD detection over a large test set on a Ray cluster: each task runs one shard of
`leafwalk eval-ood --shard K/N` on its node, the shards' per-image scores come back through
Ray's object store (no shared file system needed), and `leafwalk merge` writes the report one
process would have written — AUROC and the rest computed from the merged scores.

Every node needs the `leafwalk` binary (`cargo install --path .` or a copy of
target/release/leafwalk) and the datasets under its data root (`scripts/fetch-data.sh`).

    python bindings/python/examples/ray_eval_ood.py --address auto --shards 16 --out runs/ood -- --limit 2000
    python bindings/python/examples/ray_eval_ood.py --shards 2 --out runs/ood -- --limit 200   # a local Ray
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path
from typing import List, Sequence

import ray


@ray.remote
def eval_ood_shard(leafwalk: str, data_root: str, shard: int, shards: int, args: Sequence[str]) -> bytes:
    """Runs shard `shard` of `shards` on whichever node Ray picks; returns its shard file."""
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [leafwalk, "--data-root", data_root, "eval-ood", *args, "--shard", f"{shard}/{shards}", "--out", out],
            check=True,
            capture_output=True,
        )
        return (Path(out) / f"eval-ood-shard-{shard}-of-{shards}.json").read_bytes()


def eval_ood_on_cluster(
    leafwalk: str, data_root: str, shards: int, args: Sequence[str], out: Path
) -> subprocess.CompletedProcess:
    """Maps the shards over the cluster and merges them into `out`."""
    parts = ray.get([eval_ood_shard.remote(leafwalk, data_root, k, shards, list(args)) for k in range(1, shards + 1)])
    out.mkdir(parents=True, exist_ok=True)
    files: List[str] = []
    for k, part in enumerate(parts, start=1):
        path = out / f"eval-ood-shard-{k}-of-{shards}.json"
        path.write_bytes(part)
        files.append(str(path))
    return subprocess.run([leafwalk, "merge", *files, "--out", str(out)], check=True, capture_output=True, text=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--leafwalk", default="leafwalk", help="the binary on every node")
    parser.add_argument("--data-root", default="data", help="the datasets' folder on every node")
    parser.add_argument("--address", help="the Ray cluster to join (auto: the one this node is in); default: start one here")
    parser.add_argument("eval_ood_args", nargs="*", help="arguments for `leafwalk eval-ood` (after --)")
    args = parser.parse_args()
    ray.init(address=args.address)
    merged = eval_ood_on_cluster(args.leafwalk, args.data_root, args.shards, args.eval_ood_args, args.out)
    print(merged.stdout, end="")


if __name__ == "__main__":
    main()
