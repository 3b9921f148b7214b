"""leafwalk: what an image classifier "sees" in its input space, from numpy.

A classifier p(y|x) over C classes defines at every input x the local data matrix
G(x) = Σᵢ pᵢ ∇ₓlog pᵢ ∇ₓlog pᵢᵀ, positive semi-definite with rank ≤ C − 1. Its range is tangent
to a leaf of a foliation of input space: walking along it (the *data leaf*) morphs one image
into another; walking along its kernel (a *noise leaf*) changes the image without changing the
prediction. leafwalk computes all of it from the C×n input Jacobian J, never the n×n G, with
the same engine as the ``leafwalk`` command line.

Images are numpy arrays of pixels in [0, 1], channel first: one image ``[c, h, w]`` (or flat
``[n]``), or a batch ``[B, c, h, w]`` (or ``[B, n]``). Any float dtype is accepted and
computed in float32. Heavy calls release the GIL. Failures raise :class:`LeafwalkError` with
the command line's one-line message.

Example::

    import numpy as np, leafwalk
    model = leafwalk.load("lenet5.onnx")                  # a PyTorch export
    x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    J = model.jacobian(x)                                  # [4, 10, 784]
    g = model.geometry(x[0])                               # G at one image
    print(g.trace, g.rank, g.eigenvalues[:3])
    path = model.path(x[0], x[1], flip_target=True)        # along the data leaf
    path.save_gif("path.gif")
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _leafwalk
from ._leafwalk import LeafwalkError, __version__

__all__ = [
    "Geometry",
    "LeafwalkError",
    "Model",
    "Path",
    "Reference",
    "__version__",
    "load",
    "load_image",
    "save_gif",
    "train",
]

PathLike = Union[str, "os.PathLike[str]"]
Geometry = _leafwalk.Geometry
Reference = _leafwalk.Reference

#: ``progress(pair, step, distance, prediction)`` during :meth:`Model.path`.
Progress = Callable[[int, int, float, int], Any]


def load(
    path: PathLike,
    *,
    arch: Optional[str] = None,
    dataset: Optional[str] = None,
    layers: Optional[PathLike] = None,
    classes: Optional[Sequence[str]] = None,
    mean: Optional[Union[float, Sequence[float]]] = None,
    std: Optional[Union[float, Sequence[float]]] = None,
    device: str = "cpu",
) -> "Model":
    """Loads a classifier: a leafwalk checkpoint, an ONNX export (either PyTorch exporter), or a
    plain PyTorch ``state_dict`` in safetensors described by ``arch`` (a built-in such as
    ``"lenet5"``) or ``layers`` (a layer-description JSON file).

    ``dataset`` names the registered dataset the model was trained on (``"mnist"``,
    ``"fashion-mnist"``, ``"cifar10"``), giving its shape, classes and normalisation to a file
    that lacks them; ``classes`` names the outputs; ``mean``/``std`` (one value or one per
    channel) is the normalisation a network expects before its first layer, for a file that does
    not record it (``mean=0, std=1``: the network takes pixels as they are). ``device`` is
    ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (CUDA needs a CUDA build).

    >>> model = leafwalk.load("lenet5.safetensors", arch="lenet5", mean=0, std=1)
    >>> model.input_shape, len(model.classes)
    ((1, 28, 28), 10)
    """
    native = _leafwalk.load(
        os.fspath(path),
        arch=arch,
        dataset=dataset,
        layers=None if layers is None else os.fspath(layers),
        classes=None if classes is None else list(classes),
        mean=None if mean is None else _floats(mean),
        std=None if std is None else _floats(std),
        device=device,
    )
    return Model(native)


def _floats(value: Union[float, Sequence[float]]) -> List[float]:
    return [float(v) for v in np.atleast_1d(np.asarray(value, dtype=np.float64))]


class Model:
    """A classifier and the geometry of its input space; made by :func:`load`."""

    def __init__(self, native: Any) -> None:
        self._native = native

    @property
    def classes(self) -> List[str]:
        """Class names, in the order of the network's outputs."""
        return self._native.classes

    @property
    def input_shape(self) -> Tuple[int, int, int]:
        """``(channels, height, width)`` of one input image."""
        return self._native.input_shape

    @property
    def arch(self) -> str:
        """The architecture's name (``custom`` for a network read from ONNX or a layer file)."""
        return self._native.arch

    @property
    def dataset(self) -> Optional[str]:
        """The dataset the model was trained on, when known."""
        return self._native.dataset

    @property
    def mean(self) -> List[float]:
        """Per-channel mean subtracted from pixels before the first layer."""
        return self._native.mean

    @property
    def std(self) -> List[float]:
        """Per-channel standard deviation pixels are divided by before the first layer."""
        return self._native.std

    def __repr__(self) -> str:
        return f"leafwalk.Model(arch={self.arch!r}, input_shape={self.input_shape}, classes={len(self.classes)})"

    def _rows(self, x: Any, name: str = "x") -> Tuple[np.ndarray, bool]:
        """``x`` as C-contiguous float32 rows ``[B, n]`` and whether it was one image."""
        array = np.asarray(x, dtype=np.float32)
        c, h, w = self.input_shape
        n = c * h * w
        if array.shape in ((c, h, w), (n,)):
            return np.ascontiguousarray(array.reshape(1, n)), True
        if array.ndim in (2, 4) and array.shape[1:] in ((c, h, w), (n,)):
            return np.ascontiguousarray(array.reshape(array.shape[0], n)), False
        raise LeafwalkError(
            f"{name}: expected an image [{c}, {h}, {w}] or [{n}], or a batch [B, {c}, {h}, {w}] or [B, {n}]; "
            f"got shape {list(array.shape)}"
        )

    def log_probs(self, x: Any) -> np.ndarray:
        """log p(y|x): ``[B, C]`` for a batch, ``[C]`` for one image (float32).

        >>> model.log_probs(x).shape
        (4, 10)
        """
        rows, single = self._rows(x)
        out = self._native.log_probs(rows)
        return out[0] if single else out

    def jacobian(self, x: Any) -> np.ndarray:
        """J = ∂ log p / ∂ pixels: ``[B, C, n]`` (``[C, n]`` for one image), float32, from one
        engine pass for all classes.

        >>> J = model.jacobian(x)
        >>> np.allclose((np.exp(model.log_probs(x))[:, :, None] * J).sum(1), 0, atol=1e-4)  # Σ pᵢ Jᵢ = 0
        True
        """
        return self.log_probs_and_jacobian(x)[1]

    def log_probs_and_jacobian(self, x: Any) -> Tuple[np.ndarray, np.ndarray]:
        """``(log p, J)`` from one engine pass (shapes as :meth:`log_probs` and :meth:`jacobian`)."""
        rows, single = self._rows(x)
        log_probs, jacobian = self._native.log_probs_and_jacobian(rows)
        return (log_probs[0], jacobian[0]) if single else (log_probs, jacobian)

    def geometry(self, x: Any) -> Union["Geometry", List["Geometry"]]:
        """G at each image: a :class:`Geometry` (a list of them for a batch) with ``trace``,
        ``rank``, ``eigenvalues`` (C, descending), ``singular_values`` of J, ``jacobian`` and
        ``leaf_basis(k)`` (orthonormal eigenvectors of G, ``[k, n]``).

        >>> g = model.geometry(x[0])
        >>> g.rank <= len(model.classes) - 1
        True
        """
        rows, single = self._rows(x)
        points = self._native.geometry(rows)
        return points[0] if single else points

    def project(self, v: Any, x: Any, subspace: str = "leaf") -> np.ndarray:
        """``v`` (a pixel direction per image) projected onto the data leaf's tangent space
        ker G⊥ at ``x`` (``subspace="leaf"``) or onto ker G (``"kernel"``); float64, shaped
        ``[B, n]`` (``[n]`` for one image).

        >>> leaf = model.project(v, x[0]); kernel = model.project(v, x[0], "kernel")
        >>> np.allclose(leaf + kernel, v.reshape(-1), atol=1e-5)
        True
        """
        rows, single = self._rows(x)
        directions, _ = self._rows(v, "v")
        out = self._native.project(directions, rows, subspace)
        return out[0] if single else out

    def path(
        self,
        a: Any,
        b: Any,
        *,
        integrator: str = "adaptive",
        leaf: str = "data",
        step: float = 0.1,
        max_steps: int = 5000,
        threshold: float = 1.0,
        tolerance: float = 0.1,
        noise_steps: int = 250,
        seed: int = 0,
        flip_target: bool = False,
        via: Optional[Any] = None,
        via_candidates: int = 4,
        via_rounds: int = 4,
        progress: Optional[Progress] = None,
    ) -> Union["Path", List["Path"]]:
        """Paths from ``a`` toward ``b`` along the data leaf (one :class:`Path`, or a list for
        batches of pairs, walked together).

        ``integrator``: ``"euler"`` (the paper's fixed ``step``) or ``"adaptive"``
        (error-controlled steps of local error ≤ ``tolerance``). Lengths are in the model's
        normalised units (pixels / std). A path ends within ``threshold`` of ``b``, when it
        stalls, after ``max_steps``, or with ``flip_target`` as soon as the prediction is ``b``'s.
        ``leaf="noise"`` first walks ``noise_steps`` paper steps on ker G in a random direction
        (``seed``; pair k uses ``seed + k``), then the data leaf from there. ``via``
        (training images, a batch) lets a stalled path steer through them. ``progress(pair,
        step, distance, prediction)`` is called as the walk goes; an exception in it ends the
        call with that exception.

        >>> p = model.path(x[0], x[1], flip_target=True)
        >>> p.ending, p.frames.shape[1:]
        ('reached_class', (1, 28, 28))
        """
        starts, single = self._rows(a, "a")
        targets, _ = self._rows(b, "b")
        paths = self._native.path(
            starts,
            targets,
            integrator=integrator,
            leaf=leaf,
            step=step,
            max_steps=max_steps,
            threshold=threshold,
            tolerance=tolerance,
            noise_steps=noise_steps,
            seed=seed,
            flip_target=flip_target,
            via=None if via is None else self._rows(via, "via")[0],
            via_candidates=via_candidates,
            via_rounds=via_rounds,
            progress=progress,
        )
        wrapped = [Path(p, self.input_shape, self.classes) for p in paths]
        return wrapped[0] if single else wrapped

    def walk(
        self,
        x: Any,
        direction: Optional[Any] = None,
        *,
        subspace: str = "kernel",
        steps: int = 50,
        step: float = 0.1,
        seed: int = 0,
    ) -> "Path":
        """A walk from one image along a constant pixel ``direction`` (random from ``seed`` when
        None) projected at every step onto ker G (``subspace="kernel"``: a noise leaf, the
        prediction stays) or ker G⊥ (``"leaf"``); ``steps`` steps of ``step`` normalised units.

        >>> w = model.walk(x[0], steps=20)
        >>> w.records[-1]["prediction"] == w.records[0]["prediction"]
        True
        """
        rows, single = self._rows(x)
        if not single:
            raise LeafwalkError(f"x: a walk starts from one image, got a batch of {rows.shape[0]}")
        d = None if direction is None else self._rows(direction, "direction")[0]
        native = self._native.walk(rows, d, subspace=subspace, steps=steps, step=step, seed=seed)
        return Path(native, self.input_shape, self.classes)

    def reference(self, images: Any, labels: Sequence[int]) -> "Reference":
        """Training-set statistics for :meth:`ood_scores`: the images are the data leaf's anchors,
        their penultimate features (by label) give the Mahalanobis statistics. Build it once and
        reuse it."""
        rows, _ = self._rows(images, "images")
        return self._native.reference(rows, [int(label) for label in labels])

    def ood_scores(
        self,
        x: Any,
        *,
        reference: Union["Reference", Tuple[Any, Sequence[int]]],
        scores: Sequence[str] = ("leaf-distance", "msp"),
        anchors_per_point: int = 2,
        max_steps: int = 200,
        progress: Optional[Callable[[int, int], Any]] = None,
    ) -> Dict[str, np.ndarray]:
        """Out-of-distribution scores of each image, higher = more out of distribution: a dict
        from score name to a float64 array ``[B]``. Scores: ``leaf-distance`` (distance to the
        data leaf in the model's own length scale), ``pixel-leaf-distance``, ``trace``,
        ``spectrum``, ``msp``, ``energy``, ``odin``, ``mahalanobis``, ``gradnorm``.
        ``reference`` is a :meth:`reference` or ``(images, labels)`` of the training set.
        ``progress(done, total)`` is called after each batch of images (the leaf distances walk,
        about a second an image); an exception in it ends the call with that exception.

        >>> s = model.ood_scores(x, reference=(train_x, train_y), scores=["leaf-distance", "msp"])
        >>> s["msp"].shape
        (4,)
        """
        rows, _ = self._rows(x)
        if isinstance(reference, tuple):
            reference = self.reference(*reference)
        return self._native.ood_scores(
            rows,
            reference,
            scores=list(scores),
            anchors_per_point=anchors_per_point,
            max_steps=max_steps,
            progress=progress,
        )

    def denoise(
        self,
        x: Any,
        *,
        anchors: Any,
        per_point: int = 2,
        max_steps: int = 200,
        progress: Optional[Callable[[int, int, float], Any]] = None,
    ) -> Tuple[np.ndarray, np.ndarray]:
        """Projects each image onto the data leaf: walks from its ``per_point`` nearest
        ``anchors`` (training images) toward it and keeps the leaf point nearest it. Returns the
        projections (pixels, shaped like ``x``) and their distances to ``x`` (normalised units).
        ``progress(image, step, distance)`` is called at each step of an image's walks
        (``distance`` to the image); an exception in it ends the call with that exception.

        >>> clean, distance = model.denoise(noisy, anchors=train_x[:500])
        """
        rows, single = self._rows(x)
        anchor_rows, _ = self._rows(anchors, "anchors")
        pixels, distances = self._native.denoise(
            rows, anchor_rows, per_point=per_point, max_steps=max_steps, progress=progress
        )
        shaped = pixels.reshape((-1,) + self.input_shape)
        return (shaped[0], distances[0]) if single else (shaped, distances)


class Path:
    """A walked path: ``frames`` ``[T, c, h, w]`` (pixels, the start first), ``records`` (one dict
    per logged point: ``step``, ``distance`` to the target in normalised units, ``prediction``,
    ``probability``, ``trace_g``), ``ending`` (``reached``, ``reached_class``, ``stalled``,
    ``step_limit`` or ``diverged``), and for paths between images ``reached``, ``target_class``,
    ``flip_step`` (first step predicting the target's class), ``noise_steps``, ``waypoints``,
    ``jacobian_evals``, ``seconds``."""

    def __init__(self, native: Any, shape: Tuple[int, int, int], classes: List[str]) -> None:
        self._native = native
        self._shape = shape
        self._classes = classes
        self.frames: np.ndarray = native.frames.reshape((-1,) + shape)
        self.records: List[Dict[str, Any]] = native.records
        self.ending: str = native.ending
        self.reached: bool = native.reached
        self.jacobian_evals: int = native.jacobian_evals
        self.noise_steps: int = native.noise_steps
        self.waypoints: List[int] = native.waypoints
        self.target_class: Optional[int] = native.target_class
        self.flip_step: Optional[int] = native.flip_step
        self.seconds: float = native.seconds

    def __repr__(self) -> str:
        return f"leafwalk.Path(ending={self.ending!r}, frames={len(self.frames)}, jacobian_evals={self.jacobian_evals})"

    def save_gif(self, path: PathLike, *, frames: int = 40, frame_ms: int = 80) -> None:
        """Writes the path as a looping GIF of at most ``frames`` evenly spaced frames, each
        captioned with its step, prediction and probability."""
        by_step = {r["step"]: r for r in self.records}
        picks = sorted(set(np.linspace(0, len(self.frames) - 1, min(frames, len(self.frames))).round().astype(int)))
        captions = []
        for k in picks:
            r = by_step.get(k)
            captions.append(f"{k}: {self._classes[r['prediction']]} {r['probability']:.2f}" if r else f"{k}")
        save_gif(self.frames[picks], path, captions=captions, frame_ms=frame_ms)


def load_image(
    path: PathLike, shape: Union["Model", Tuple[int, int, int]], *, invert: str = "auto"
) -> np.ndarray:
    """An image file (PNG, JPEG or GIF) as float32 pixels ``[c, h, w]`` in [0, 1], read as the
    command line reads ``--image``: resized (bilinear) to ``shape`` — a model's input shape or
    the model itself — and, with ``invert="auto"``, a dark-on-light single-channel drawing
    inverted to the datasets' light-on-dark (``"on"``/``"off"`` force it).

    >>> seven = leafwalk.load_image("models/samples/mnist-7.png", model)
    """
    if isinstance(shape, Model):
        shape = shape.input_shape
    return _leafwalk.load_image(os.fspath(path), tuple(int(v) for v in shape), invert=invert)


def save_gif(
    frames: Any, path: PathLike, *, captions: Optional[Sequence[str]] = None, frame_ms: int = 80
) -> None:
    """Writes ``frames`` (``[T, c, h, w]`` pixels in [0, 1]) as a looping GIF, each frame drawn
    4× with its caption (one per frame) under it."""
    array = np.asarray(frames, dtype=np.float32)
    if array.ndim != 4:
        raise LeafwalkError(f"frames: expected [T, c, h, w], got shape {list(array.shape)}")
    t, c, h, w = array.shape
    _leafwalk.save_gif(
        np.ascontiguousarray(array.reshape(t, c * h * w)),
        (c, h, w),
        os.fspath(path),
        captions=None if captions is None else list(captions),
        frame_ms=frame_ms,
    )


def train(
    arch: str = "mnist-cnn",
    dataset: str = "mnist",
    out: PathLike = "runs/train",
    *,
    epochs: int = 10,
    lr: float = 0.01,
    batch_size: int = 60,
    optimizer: str = "sgd",
    seed: int = 42,
    data_root: PathLike = "data",
    resume: bool = False,
    reference_size: int = 200,
    min_accuracy: float = 0.95,
    device: str = "cpu",
    progress: Optional[Callable[[int], Any]] = None,
) -> List[Dict[str, Any]]:
    """Trains a built-in architecture as ``leafwalk train`` does (same defaults: the paper's
    plain SGD), writing ``epoch-XX.safetensors`` checkpoints, the resume file and the log to
    ``out``; the datasets are read from ``data_root`` (``scripts/fetch-data.sh`` fetches them).
    Returns one dict per epoch (losses, accuracies, mean trace of G on a fixed reference batch,
    checkpoint path). ``progress(step)`` is called as training goes, with the step count; an exception in
    it, or Ctrl-C, stops the run after that step with the resume state saved (``resume=True``
    continues it) and is raised.

    >>> epochs = leafwalk.train("mlp", "mnist", "runs/mlp", epochs=1)
    """
    return _leafwalk.train(
        arch,
        dataset,
        os.fspath(out),
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        optimizer=optimizer,
        seed=seed,
        data_root=os.fspath(data_root),
        resume=resume,
        reference_size=reference_size,
        min_accuracy=min_accuracy,
        device=device,
        progress=progress,
    )
