"""A dataset-level leafwalk command over a Ray cluster: each task runs one shard of
`leafwalk COMMAND --shard K/N` on its node (`eval-ood`, `eval-paths`, `eval-denoise`,
`inspect --data …` or `study`), the shard files come back through Ray's object store (no shared
file system needed), and `leafwalk merge` writes the report one process would have written —
AUROC, medians and means computed from the merged per-item values, never averaged.

Every node needs the `leafwalk` binary (`cargo install --path .` or a copy of
target/release/leafwalk), the model file at the same path and the datasets under its data root
(`scripts/fetch-data.sh`).

    python bindings/python/examples/ray_shards.py --address auto --shards 16 --out runs/ood eval-ood -- --limit 2000
    python bindings/python/examples/ray_shards.py --shards 2 --out runs/g inspect -- --data mnist:test --limit 200
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path
from typing import List, Sequence

import ray


@ray.remote
def run_shard(leafwalk: str, data_root: str, command: str, shard: int, shards: int, args: Sequence[str]) -> bytes:
    """Runs shard `shard` of `shards` of `command` on whichever node Ray picks; returns its shard file."""
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [leafwalk, "--data-root", data_root, command, *args, "--shard", f"{shard}/{shards}", "--out", out],
            check=True,
            capture_output=True,
        )
        return (Path(out) / f"{command}-shard-{shard}-of-{shards}.json").read_bytes()


def run_on_cluster(
    leafwalk: str, data_root: str, command: str, shards: int, args: Sequence[str], out: Path
) -> subprocess.CompletedProcess:
    """Maps the shards of `command` over the cluster and merges them into `out`."""
    tasks = [run_shard.remote(leafwalk, data_root, command, k, shards, list(args)) for k in range(1, shards + 1)]
    out.mkdir(parents=True, exist_ok=True)
    files: List[str] = []
    for k, part in enumerate(ray.get(tasks), start=1):
        path = out / f"{command}-shard-{k}-of-{shards}.json"
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
    parser.add_argument("command", choices=["eval-ood", "eval-paths", "eval-denoise", "inspect", "study"])
    parser.add_argument("command_args", nargs="*", help="the command's own arguments (after --)")
    args = parser.parse_args()
    ray.init(address=args.address)
    merged = run_on_cluster(args.leafwalk, args.data_root, args.command, args.shards, args.command_args, args.out)
    print(merged.stdout, end="")


if __name__ == "__main__":
    main()
