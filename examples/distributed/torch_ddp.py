"""DREG with PyTorch `DistributedDataParallel` in your own training loop.

Keras 3's `fit` has no DDP of its own. Compile the model (the
input-gradient penalty differentiates the compiled loss), wrap it in
`DistributedDataParallel` and take the loss from `model.compute_loss`:
the training forward pass adds DREG and weight decay to `model.losses`,
and `compute_loss` adds those and the step penalties (IGPen, Jacobian)
to the compiled loss:

    y_pred = ddp(x, training=True)
    loss = model.compute_loss(x, y, y_pred)
    loss.backward()

This works for every penalty-based regularizer (DREG, weight decay,
IGPen, Jacobian). Run with two gloo processes on CPU:

    KERAS_BACKEND=torch python examples/distributed/torch_ddp.py

Each process takes half of every batch; DDP averages the gradients, which
equal the single-process gradients on the whole batch, and the losses and
penalties (batch means) averaged over the processes equal the
single-process ones. The two processes are started once for all
regularizers, with one intra-op thread each on a 2-core CPU (as `torchrun`
does), and a stuck collective or worker fails after `--timeout` seconds
with the stacks of its threads instead of hanging.
"""

import contextlib
import datetime
import faulthandler
import gc
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


def train(model, forward, x, y, steps, rank=0, world_size=1) -> dict:
    """SGD steps with the penalties, on this process's share of each batch.

    Returns the losses and penalties of each step (averaged over the
    processes), the gradients of each step and the final weights.
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    shard = len(x) // steps // world_size
    losses, penalties, gradients = [], [], []
    for step in range(steps):
        start = (step * world_size + rank) * shard
        xb = torch.as_tensor(x[start : start + shard])
        yb = torch.as_tensor(y[start : start + shard])
        optimizer.zero_grad()
        y_pred = forward(xb, training=True)
        loss = model.compute_loss(xb, yb, y_pred)
        value = loss - LOSS(yb, y_pred)
        loss.backward()  # Under DDP: the mean of the processes' gradients.
        gradients.extend(_gradients(model))
        optimizer.step()
        losses.append(loss.detach())
        penalties.append(value.detach())
    return {
        "loss": [_process_mean(losses, world_size)],
        "penalty": [_process_mean(penalties, world_size)],
        "gradients": gradients,
        "weights": [np.array(w) for w in model.get_weights()],
    }


def _gradients(model):
    return [
        p.grad.detach().numpy().copy()
        for p in model.parameters()
        if p.requires_grad
    ]


def _process_mean(values, world_size):
    """The mean over the processes of each step's value (batch means)."""
    values = torch.stack(values)
    if world_size > 1:
        dist.all_reduce(values)
        values = values / world_size
    return values.numpy()


def worker(rank, regularizers, steps, timeout, store, out):
    """One DDP process: trains each regularizer, rank 0 saves the runs."""
    # A stuck process prints its threads' stacks and exits (the timer
    # restarts for each regularizer and runs until the process exits).
    faulthandler.dump_traceback_later(timeout, exit=True)
    # As torchrun does: the processes share the machine's cores.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // WORLD_SIZE))
    with process_group(rank, store, timeout):
        for regularizer in regularizers:
            faulthandler.dump_traceback_later(timeout, exit=True)
            run = train_data_parallel(regularizer, steps, rank)
            if rank == 0:
                _save(os.path.join(out, f"{regularizer}.npz"), run)


def train_data_parallel(regularizer, steps, rank) -> dict:
    """`train` under DDP; the wrapper is freed when this returns."""
    model = common.compile_model(common.build(regularizer))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    x, y = common.data(steps)
    return train(model, ddp, x, y, steps, rank, WORLD_SIZE)


@contextlib.contextmanager
def process_group(rank, store, timeout):
    """The gloo process group, destroyed after the DDP wrappers.

    A DDP wrapper holds a reference to the group. If the group is
    destroyed first, the wrapper holds the last one, and freeing the
    wrapper then destroys the group while holding the GIL: the group's
    destructor joins its worker threads, and a worker thread that is
    still releasing its last collective needs the GIL to do so. The
    process deadlocks (intermittently: the worker thread must be late,
    as on a loaded machine). Hence: collect the wrappers first, which
    may sit in reference cycles, and only then destroy the group.
    """
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=timeout),
    )
    try:
        yield
    finally:
        gc.collect()
        dist.destroy_process_group()


def data_parallel(regularizers, steps, timeout) -> dict:
    """Runs of each regularizer in `WORLD_SIZE` gloo processes.

    Raises if a process fails, or if they take longer than `timeout`
    seconds per regularizer, and twice that to start.
    """
    with tempfile.TemporaryDirectory() as tmp:
        # A file store: no TCP port to pick, none to collide on.
        store = os.path.join(tmp, "store")
        context = mp.spawn(
            worker,
            args=(regularizers, steps, timeout, store, tmp),
            nprocs=WORLD_SIZE,
            join=False,
        )
        _join(context, timeout * (len(regularizers) + 2))
        return {r: _load(os.path.join(tmp, f"{r}.npz")) for r in regularizers}


def _join(context, timeout):
    """Waits for the processes; raises on failure or after `timeout` s."""
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout)
    while not context.join(timeout=5):
        if datetime.datetime.now() > deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"DDP workers still running after {timeout}s")


def _save(path, run):
    arrays = {f"{key}/{i}": a for key in run for i, a in enumerate(run[key])}
    np.savez(path, **arrays)


def _load(path):
    run = {}
    with np.load(path) as saved:
        for name in saved.files:
            key, i = name.split("/")
            run.setdefault(key, {})[int(i)] = saved[name]
    return {key: [v[i] for i in sorted(v)] for key, v in run.items()}


def main():
    parser = common.make_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--timeout",
        type=float,
        default=300,
        help="seconds a process may take per regularizer before it fails",
    )
    args = parser.parse_args()
    regularizers = args.regularizers.split(",")
    parallel = data_parallel(regularizers, args.steps, args.timeout)
    reports = []
    for regularizer in regularizers:
        model = common.compile_model(common.build(regularizer))
        x, y = common.data(args.steps)
        single = train(model, model, x, y, args.steps)
        reports.append(
            common.compare(regularizer, single, parallel[regularizer])
        )
    common.finish(reports, args.check)


if __name__ == "__main__":
    main()
