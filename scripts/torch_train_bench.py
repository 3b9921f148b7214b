"""Training throughput of a shared fixture model in PyTorch, for a same-run ratio with
`cargo bench -p leafwalk-train --bench train` (scripts/bench.sh train runs both).

  python scripts/torch_train_bench.py NAME --fixtures DIR [--data DIR] [--threads N] [--batch B]

NAME is a model of DIR/torch_models.py (lenet5, vgg-bn-small, resnet-mini). Mirrors leafwalk's
benchmark: SGD (lr 0.01), 20 batches per run, median of 5 runs after 1 warm-up run, in training
mode (batch norm on batch statistics); MNIST training images from DIR/mnist when present (the
first 1,200), uniform random pixels otherwise. Prints one JSON line."""
import gzip, json, os, sys, time

import numpy as np
import torch
import torch.nn.functional as F


def idx_images(path, count):
    with gzip.open(path, "rb") as f:
        data = f.read()
    n, rows, cols = (int.from_bytes(data[4 * i + 4:4 * i + 8], "big") for i in range(3))
    pixels = np.frombuffer(data, dtype=np.uint8, offset=16, count=min(n, count) * rows * cols)
    return torch.from_numpy(pixels.astype(np.float32) / 255.0).view(-1, 1, rows, cols)


def main():
    a = sys.argv[1:]
    name = a[0]
    opt = lambda flag, default: a[a.index(flag) + 1] if flag in a else default
    fixtures, data = opt("--fixtures", "../shared/models"), opt("--data", "data")
    torch.set_num_threads(int(opt("--threads", str(os.cpu_count()))))
    batch, batches = int(opt("--batch", "60")), 20
    sys.path.insert(0, fixtures)
    import torch_models
    model, shape = torch_models.build(name)
    model.train()
    images = os.path.join(data, "mnist", "train-images-idx3-ubyte.gz")
    if shape == (1, 28, 28) and os.path.exists(images):
        x, source = idx_images(images, batch * batches), "mnist"
    else:
        x, source = torch.rand(batch * batches, *shape), "random"
    y = torch.randint(0, 10, (batch * batches,), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def run():
        start = time.perf_counter()
        for b in range(batches):
            xs, ys = x[b * batch:(b + 1) * batch], y[b * batch:(b + 1) * batch]
            optimizer.zero_grad()
            F.nll_loss(F.log_softmax(model(xs), 1), ys).backward()
            optimizer.step()
        return time.perf_counter() - start

    run()
    times = sorted(run() for _ in range(5))
    print(json.dumps({"model": name, "batch": batch, "data": source, "threads": torch.get_num_threads(),
                      "images_per_s": batch * batches / times[2], "torch": torch.__version__}))


if __name__ == "__main__":
    main()
