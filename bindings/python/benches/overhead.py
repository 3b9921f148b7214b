"""The Python call's Jacobian throughput (points/s at batch 64) on the fixtures the engine's own
benchmark times (crates/leafwalk-geometry/benches/jacobian.rs), timed the same way: the median
of 5 runs after a warm-up, each repeating the call for at least 0.5 s, on uniform random pixels.
The engine's figure is also taken in this process, the call's Rust side timed in Rust between
the Python timings (3 turns; the median of the turns' ratios). One JSON line; `scripts/bench.sh
python` runs both and prints the ratios.

    python bindings/python/benches/overhead.py [MODEL ...]     (default: lenet5 resnet-mini)
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import leafwalk

FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "fixtures"
BATCH = 64


def median_seconds(call, min_seconds: float = 0.5) -> float:
    call()
    times = []
    for _ in range(5):
        start, repeats = time.perf_counter(), 0
        while repeats == 0 or time.perf_counter() - start < min_seconds:
            call()
            repeats += 1
        times.append((time.perf_counter() - start) / repeats)
    return statistics.median(times)


#: Turns the Python call and the in-process engine figure take.
TURNS = 3


def main(names) -> None:
    models = {}
    for name in names:
        model = leafwalk.load(FIXTURES / f"{name}.safetensors", arch=name, mean=0, std=1)
        x = np.random.default_rng(0).random((BATCH,) + model.input_shape, dtype=np.float32)
        # The same pass timed from Python and, in this process right after, from Rust without
        # returning to Python: a ratio of neighbours on a machine whose speed drifts.
        python, engine = [], []
        for _ in range(TURNS):
            python.append(BATCH / median_seconds(lambda: model.jacobian(x)))
            engine.append(model._native._engine_points_per_s(model._rows(x)[0], seconds=0.5, runs=5))
        models[name] = {
            f"python_batch{BATCH}_points_per_s": statistics.median(python),
            f"engine_in_process_batch{BATCH}_points_per_s": statistics.median(engine),
            "ratio_python_over_engine_in_process": statistics.median(p / e for p, e in zip(python, engine)),
        }
    print(json.dumps({"bench": "python", "leafwalk": leafwalk.__version__, "models": models}))


if __name__ == "__main__":
    main(sys.argv[1:] or ["lenet5", "resnet-mini"])
