"""Data-parallel training under ``torchrun``: N processes, one model, one global batch.

``torchrun --nproc_per_node N -m lesionforge gan train ...`` starts the command N times;
`gan.train.trainer.train` finds the launch in the environment torchrun sets
(``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and joins the
process group (`joined`): gloo on CPU, NCCL on GPUs, where process ``LOCAL_RANK`` takes
``cuda:LOCAL_RANK``. Without those variables, or with ``WORLD_SIZE=1``, nothing here runs
and one process trains exactly as it always has.

N processes train the model that one process trains with the same batch size (the
global batch, what the config says):

- every process draws step ``s``'s whole batch from ``(seed, s)``, as one process does, and
  keeps its contiguous part (`BatchShard`): process ``r`` of ``N`` the samples
  ``r*B/N .. (r+1)*B/N - 1``; a batch size ``N`` does not divide is refused;
- every process seeds torch alike, and the draws a model makes per sample inside a step
  (DCGAN's latent codes, CycleGAN's image-pool swaps) are made for the whole batch and cut
  the same way (``GanModule.shard``); CycleGAN's image pools see the whole batch's fakes,
  so every process holds the pools one process would;
- every network an optimizer updates runs through DistributedDataParallel, which averages
  the gradients over the processes: each loss is a mean over a process's part of the
  batch and the parts are equal, so that average is the whole batch's gradient;
- logged losses are averaged over the processes too (the whole batch's), so a loss that
  goes NaN/inf in any process stops every process at the same step;
- process 0 alone writes the run folder: checkpoints (plain state dicts, as one process
  writes them, so a run resumes with any N, 1 included), ``config.yaml`` (which records
  the world size and backend), the log, grids, wandb, and shows the progress bar.

So N processes and one process end with the same weights up to floating-point rounding
(tests/gan/test_ddp.py; but for the biases of convolutions an InstanceNorm follows, which
the norm cancels: their gradient is rounding noise, which Adam turns into steps of about
its learning rate, other noise in other runs, with no effect on any output), except where
a network itself computes over its batch:

- BatchNorm (DCGAN's generator and, without ``spectral_norm``, its discriminator;
  pix2pix with ``norm: batch``): on CUDA its layers become SyncBatchNorm, statistics of the
  whole batch; PyTorch has no SyncBatchNorm on CPU, so there each process normalises by
  its own part of the batch (and checkpoints hold process 0's running statistics);
- dropout inside networks (pix2pix's ``use_dropout``): each process draws the masks of its
  own part, from the same seed.

Those runs train the same model in distribution, not to floating-point rounding.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from augment.errors import ConfigError

log = logging.getLogger(__name__)

# What torchrun sets for every process it starts, and `init_process_group` reads.
LAUNCH_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class BatchShard:
    """This process's part of every batch: part ``index`` of ``count`` equal, contiguous ones.

    A model's ``training_step`` makes its per-sample random draws through it
    (``GanModule.shard``), so that N processes draw what one process draws for the whole
    batch. The default, one part, changes nothing.
    """

    index: int = 0
    count: int = 1

    def local(self, x: Tensor) -> Tensor:
        """This part of ``x``, a whole batch along its first dimension."""
        if self.count == 1:
            return x
        n = len(x) // self.count
        return x[self.index * n : (self.index + 1) * n]

    def local_batch(self, batch: dict[str, Any], batch_size: int) -> dict[str, Any]:
        """This part of every tensor of ``batch`` (what ``make_batch`` drew, ``batch_size``
        samples per tensor)."""
        if self.count == 1:
            return batch
        out = {}
        for key, value in batch.items():
            if isinstance(value, Tensor):
                if len(value) != batch_size:
                    raise ValueError(
                        f"make_batch: {key!r} has {len(value)} rows, not one per sample of "
                        f"the batch ({batch_size}), so it cannot be split over processes"
                    )
                value = self.local(value)
            out[key] = value
        return out

    def randn(self, n: int, *size: int, device: torch.device | str | None = None) -> Tensor:
        """``torch.randn(n, *size)`` for this part's ``n`` samples: drawn for the whole batch
        (``n * count`` samples) from the global torch RNG, then cut."""
        return self.local(torch.randn(n * self.count, *size, device=device))

    def gather(self, x: Tensor) -> Tensor:
        """The whole batch, from every process's part ``x`` (in process order; no gradient)."""
        if self.count == 1:
            return x
        x = x.detach().contiguous()
        parts = [torch.empty_like(x) for _ in range(self.count)]
        dist.all_gather(parts, x)
        return torch.cat(parts)


WHOLE_BATCH = BatchShard()


@dataclass(frozen=True)
class World:
    """The processes that train one model together: this one alone unless torchrun
    started several.

    Attributes:
        rank: this process's number, 0 .. size - 1 (0 writes the run folder).
        size: how many processes train together.
        device: where this process trains.
        backend: ``"gloo"`` or ``"nccl"``; None for one process (no process group).
        cpu_group: the group for collectives on CPU values (the interrupt flag, the
            checkpoint's hash): the default one under gloo, a gloo group beside NCCL's.
    """

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    cpu_group: Any = field(default=None, repr=False, compare=False)

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run folder (rank 0)."""
        return self.rank == 0

    @property
    def shard(self) -> BatchShard:
        return BatchShard(self.rank, self.size)

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is set in any process (every process gets the same answer)."""
        if self.size == 1:
            return flag
        t = torch.tensor([int(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.cpu_group)
        return bool(t.item())

    def mean(self, values: dict[str, Tensor | float]) -> dict[str, Tensor | float]:
        """Each value averaged over the processes (losses: the whole batch's, parts being
        equal); stays on the device, no host wait."""
        if self.size == 1:
            return values
        keys = sorted(values)
        vec = torch.stack(
            [
                torch.as_tensor(values[k], device=self.device).detach().float().reshape(())
                for k in keys
            ]
        )
        dist.all_reduce(vec)
        return dict(zip(keys, (vec / self.size).unbind(), strict=True))

    def from_main(self, value: Any) -> Any:
        """Process 0's ``value`` (picklable), in every process; also waits for process 0."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.cpu_group)
        return box[0]

    def barrier(self) -> None:
        """Wait until every process got here."""
        if self.size > 1:
            dist.barrier(group=self.cpu_group)


def launched_size() -> int:
    """How many processes torchrun started for this run (1 when it started none)."""
    if not all(name in os.environ for name in LAUNCH_ENV):
        return 1
    return int(os.environ["WORLD_SIZE"])


def check_batch_split(batch_size: int, size: int) -> None:
    """Refuse a global batch that ``size`` processes cannot split into equal parts."""
    if batch_size % size:
        fits = batch_size - batch_size % size or size
        raise ConfigError(
            f"batch size {batch_size} does not split over the {size} processes torchrun "
            f"started (--nproc_per_node): the batch size is the global batch, each process "
            f"takes 1/{size} of it; use a multiple of {size} (e.g. --batch-size {fits})"
        )


@contextlib.contextmanager
def joined(device: torch.device) -> Iterator[World]:
    """The `World` this process trains in; under torchrun, inside its process group.

    One process (no torchrun, or ``WORLD_SIZE=1``): ``World(device=device)``, nothing
    else happens. Under torchrun: the process group is joined (gloo on CPU, NCCL on
    CUDA, where this process takes ``cuda:LOCAL_RANK``) and left on exit; a group the
    caller already joined is used as it is.

    Raises:
        ConfigError: a CUDA index other than ``LOCAL_RANK``, or a device that is neither
            CPU nor CUDA.
    """
    size = launched_size()
    if size == 1:
        yield World(device=device)
        return
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        if device.index is not None and device.index != local_rank:
            raise ConfigError(
                f"--device {device}: under torchrun process {local_rank} of this machine "
                "trains on cuda:LOCAL_RANK; use --device cuda (or auto)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ConfigError(f"--device {device}: torchrun training runs on cpu or cuda")
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend, device_id=device if backend == "nccl" else None)
    else:
        backend = dist.get_backend()
    cpu_group = dist.new_group(backend="gloo") if backend == "nccl" else None
    world = World(dist.get_rank(), dist.get_world_size(), device, backend, cpu_group)
    log.info("process %d of %d (%s, %s)", world.rank, world.size, backend, device)
    try:
        yield world
    finally:
        if created:
            dist.destroy_process_group()


def trained_networks(module: nn.Module) -> list[str]:
    """Names of ``module``'s top-level submodules holding parameters its optimizers update."""
    trained = {
        id(p)
        for opt in module.optimizers.values()  # type: ignore[union-attr]
        for group in opt.param_groups
        for p in group["params"]
    }
    return [
        name
        for name, child in module.named_children()
        if any(id(p) in trained for p in child.parameters())
    ]


def data_parallel(
    module: nn.Module, world: World, *, compile_networks: bool = False
) -> Callable[[], contextlib.AbstractContextManager]:
    """What the trainer enters around each training step of ``module``.

    One process: nothing. Several: every network an optimizer updates
    (`trained_networks`) is wrapped in DistributedDataParallel, once (on CUDA its
    BatchNorm layers become SyncBatchNorm first: same parameters, same state-dict keys),
    and each step runs with those wrappers in place of the networks and
    ``module.shard`` set to this process's part of the batch. With ``compile_networks``
    each trained network (or its DDP wrapper, as PyTorch advises) is also wrapped in
    ``torch.compile`` (`gan.train.compiled`), for the training step only: grids, probes and
    synthesis run the plain networks, so they never trigger a compilation of their own.

    The wrappers shadow the networks as instance attributes (``module.netG`` finds the
    wrapper first), while ``state_dict``, ``parameters`` and the submodules still see the
    plain networks: checkpoints keep their keys, and synthesis outside the step (the
    grids process 0 draws) never enters a collective the other processes do not.
    """
    if world.size == 1 and not compile_networks:
        return contextlib.nullcontext
    wrapped: dict[str, nn.Module] = {}
    per_process_norm = []
    for name in trained_networks(module) if world.size > 1 else ():
        net = getattr(module, name)
        if world.device.type == "cuda":
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
            setattr(module, name, net)
        elif any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()):
            per_process_norm.append(name)
        device_ids = [world.device.index] if world.device.type == "cuda" else None
        wrapped[name] = DistributedDataParallel(net, device_ids=device_ids)
    if per_process_norm and world.is_main:
        log.warning(
            "%s: BatchNorm in %s normalises by each process's part of the batch (no "
            "SyncBatchNorm on CPU): close to, not the same as, one process with this batch",
            module.name, ", ".join(per_process_norm),
        )  # fmt: skip

    if compile_networks:
        for name in trained_networks(module):
            wrapped[name] = torch.compile(wrapped.get(name, getattr(module, name)))

    @contextlib.contextmanager
    def step() -> Iterator[None]:
        attributes = vars(module)
        attributes.update(wrapped)
        if world.size > 1:
            module.shard = world.shard
        try:
            yield
        finally:
            for name in wrapped:
                del attributes[name]
            if world.size > 1:
                del module.shard  # back to the class's whole batch

    return step


__all__ = [
    "LAUNCH_ENV",
    "WHOLE_BATCH",
    "BatchShard",
    "World",
    "check_batch_split",
    "data_parallel",
    "joined",
    "launched_size",
    "trained_networks",
]
