"""DREG with PyTorch `DistributedDataParallel` in your own training loop.

Keras 3's `fit` has no DDP of its own. Compile the model (the
input-gradient penalty differentiates the compiled loss), wrap it in
`DistributedDataParallel` and add the penalties from
`model.penalty_scope()`, which records the forward pass run inside it:

    with model.penalty_scope() as penalty:
        y_pred = ddp(x, training=True)
        loss = loss_fn(y, y_pred) + penalty(x, y, y_pred)
    loss.backward()

Run with two gloo processes on CPU:

    KERAS_BACKEND=torch python examples/distributed/torch_ddp.py

Each process takes half of every batch; DDP averages the gradients, which
equal the single-process gradients on the whole batch.
"""

import os
import tempfile

os.environ.setdefault("KERAS_BACKEND", "torch")

import common  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

WORLD_SIZE = 2
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def train(model, forward, x, y, steps, rank=0, world_size=1):
    """SGD steps with the penalty; returns losses, penalties, weights."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    shard = len(x) // steps // world_size
    losses, penalties = [], []
    for step in range(steps):
        start = (step * world_size + rank) * shard
        xb = torch.as_tensor(x[start : start + shard])
        yb = torch.as_tensor(y[start : start + shard])
        optimizer.zero_grad()
        with model.penalty_scope() as penalty:
            y_pred = forward(xb, training=True)
            value = penalty(xb, yb, y_pred)
            loss = LOSS(yb, y_pred) + value
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
        penalties.append(float(value))
    return losses, penalties, [np.array(w) for w in model.get_weights()]


def worker(rank, regularizer, steps, port, path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    model = common.compile_model(common.build(regularizer))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    x, y = common.data(steps, batch_size=16)
    _, _, weights = train(model, ddp, x, y, steps, rank, WORLD_SIZE)
    if rank == 0:
        np.savez(path, *weights)
    dist.destroy_process_group()


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    args = common.parse_args(__doc__.splitlines()[0])
    reports = []
    for regularizer in args.regularizers.split(","):
        model = common.compile_model(common.build(regularizer))
        x, y = common.data(args.steps, batch_size=16)
        _, _, single = train(model, model, x, y, args.steps)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "weights.npz")
            mp.spawn(
                worker,
                args=(regularizer, args.steps, free_port(), path),
                nprocs=WORLD_SIZE,
            )
            with np.load(path) as saved:
                parallel = [saved[f"arr_{i}"] for i in range(len(single))]
        reports.append(
            common.compare(
                regularizer, {"weights": single}, {"weights": parallel}
            )
        )
    common.finish(reports, args.check)


if __name__ == "__main__":
    main()
