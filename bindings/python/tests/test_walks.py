"""Paths and walks on the shipped mnist-cnn: shapes, endings, callbacks, GIFs."""

from __future__ import annotations

import numpy as np
import pytest

import leafwalk


@pytest.fixture(scope="module")
def digits(golden_lenet5):
    return golden_lenet5["inputs"]


def test_a_data_leaf_path_reaches_the_target_class(mnist_cnn, digits):
    path = mnist_cnn.path(digits[0], digits[1], flip_target=True)
    assert isinstance(path, leafwalk.Path)
    assert path.frames.shape[1:] == (1, 28, 28) and len(path.frames) >= 2
    assert np.abs(path.frames[0] - digits[0]).max() <= 1e-5
    assert path.ending in {"reached", "reached_class", "stalled", "step_limit"}
    steps = [r["step"] for r in path.records]
    assert steps == sorted(steps) and steps[0] == 0
    if path.ending == "reached_class":
        assert path.records[-1]["prediction"] == path.target_class
        assert path.flip_step == path.records[-1]["step"]


def test_pairs_walk_together_and_report_progress(mnist_cnn, digits):
    seen = []
    paths = mnist_cnn.path(
        digits[:3], digits[3:6], max_steps=6, progress=lambda pair, step, distance, prediction: seen.append(pair)
    )
    assert len(paths) == 3 and set(seen) == {0, 1, 2}
    assert all(p.jacobian_evals >= 1 for p in paths)


def test_an_exception_in_the_callback_ends_the_call(mnist_cnn, digits):
    def stop(*_):
        raise KeyboardInterrupt("enough")

    with pytest.raises(KeyboardInterrupt, match="enough"):
        mnist_cnn.path(digits[0], digits[1], max_steps=5, progress=stop)


def test_a_noise_leaf_path_starts_with_kernel_steps(mnist_cnn, digits):
    path = mnist_cnn.path(digits[0], digits[1], leaf="noise", noise_steps=5, max_steps=5)
    assert path.noise_steps == 5
    assert [r["prediction"] for r in path.records[:6]] == [path.records[0]["prediction"]] * 6


def test_a_kernel_walk_keeps_the_prediction(mnist_cnn, digits):
    walk = mnist_cnn.walk(digits[0], steps=20, seed=1)
    assert len(walk.frames) == 21
    assert {r["prediction"] for r in walk.records} == {walk.records[0]["prediction"]}
    assert walk.records[-1]["distance"] > 0


def test_a_path_saves_as_a_gif(mnist_cnn, digits, tmp_path):
    path = mnist_cnn.path(digits[0], digits[1], max_steps=4)
    path.save_gif(tmp_path / "path.gif")
    assert (tmp_path / "path.gif").read_bytes()[:4] == b"GIF8"


def test_denoising_projects_onto_the_data_leaf(mnist_cnn, digits):
    noisy = np.clip(digits[:2] + 0.3 * np.random.default_rng(0).standard_normal(digits[:2].shape), 0, 1)
    closest = {}

    def follow(image, step, distance):
        closest[image] = min(distance, closest.get(image, np.inf))

    clean, distances = mnist_cnn.denoise(noisy, anchors=digits[2:], max_steps=20, progress=follow)
    assert clean.shape == noisy.shape and distances.shape == (2,)
    assert np.all(distances >= 0) and clean.min() >= 0 and clean.max() <= 1
    # Each image's walks are reported, and the nearest they came is the projection's distance.
    assert np.allclose([closest[0], closest[1]], distances, rtol=1e-6)

    def stop(*_):
        raise KeyboardInterrupt("enough")

    with pytest.raises(KeyboardInterrupt, match="enough"):
        mnist_cnn.denoise(noisy, anchors=digits[2:], max_steps=5, progress=stop)


def test_ood_scores_from_images_in_memory(mnist_cnn, digits, golden_lenet5):
    labels = np.argmax(golden_lenet5["log_probs"], axis=1)
    reference = mnist_cnn.reference(digits, labels)
    noise = np.random.default_rng(1).random((3, 1, 28, 28))
    scores = mnist_cnn.ood_scores(noise, reference=reference, scores=["leaf-distance", "msp", "energy"], max_steps=20)
    assert set(scores) == {"leaf-distance", "msp", "energy"}
    assert all(v.shape == (3,) and np.all(np.isfinite(v)) for v in scores.values())
    done = []
    again = mnist_cnn.ood_scores(noise, reference=(digits, labels), scores=["msp"], progress=lambda d, n: done.append((d, n)))
    assert np.array_equal(again["msp"], scores["msp"])
    assert done == [(3, 3)]


def test_heavy_calls_release_the_gil(lenet5):
    import threading

    ticks, done = [0], threading.Event()

    def count():
        while not done.is_set():
            ticks[0] += 1

    x = np.random.default_rng(0).random((512, 1, 28, 28), dtype=np.float32)
    counter = threading.Thread(target=count)
    counter.start()
    before = ticks[0]
    lenet5.jacobian(x)
    during = ticks[0] - before
    done.set()
    counter.join()
    assert during > 1000, f"the counting thread ran {during} times during the call"


def test_training_writes_checkpoints_and_reports_progress(tmp_path):
    from conftest import tiny_mnist

    tiny_mnist(tmp_path / "data")
    steps = []
    epochs = leafwalk.train(
        "mlp", "mnist", tmp_path / "run", epochs=1, batch_size=20, data_root=tmp_path / "data",
        reference_size=4, progress=steps.append,
    )
    assert len(epochs) == 1 and 0 <= epochs[0]["test_accuracy"] <= 1 and steps
    model = leafwalk.load(epochs[0]["checkpoint"])
    assert model.arch == "mlp" and model.dataset == "mnist"

    def stop(step):
        raise KeyboardInterrupt("stop here")

    with pytest.raises(KeyboardInterrupt, match="stop here"):
        leafwalk.train("mlp", "mnist", tmp_path / "run2", epochs=2, batch_size=20, data_root=tmp_path / "data",
                       reference_size=4, progress=stop)
    assert (tmp_path / "run2" / "resume.safetensors").is_file()
