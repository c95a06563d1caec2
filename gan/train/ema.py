"""An exponential moving average (EMA) of a model's generator weights, used for sampling.

A GAN generator trained on tens of examples oscillates from step to step; the average of
its recent weights draws cleaner, more stable samples than the last weights do (Karras et
al. 2018, Yazici et al. 2019; stylegan2-ada's ``G_ema``). A model that declares
``ema_networks`` (its generator attributes) and sets ``ema > 0`` in its config keeps a
shadow copy of those networks in the submodule ``ema``:

- after every training step the trainer calls `update_ema`: each shadow parameter becomes
  ``beta * shadow + (1 - beta) * live`` with ``beta = min(ema, (1 + t) / (10 + t))`` after
  ``t`` earlier updates (TensorFlow's ``ExponentialMovingAverage(num_updates=t)`` warm-up,
  so the first hundred steps do not drag the random initial weights along), and buffers
  (batch-norm running statistics) are copied as they are;
- synthesis, `GanModule.sample`, the progress grids, the training probes and ``gan
  evaluate`` run the shadow networks (`GanModule.generator_net`);
- the shadow weights and the update count are ordinary state-dict entries (``ema.nets.*``,
  ``ema.updates``): a checkpoint holds them as tensors, ``weights_only=True`` loads them,
  and a resumed run continues the same average bit for bit.

A checkpoint written before EMA existed has no ``ema.*`` entries: `complete_ema_state` fills
them from the raw generator's weights (and says so in the log), so such checkpoints load and
sample exactly as before.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from augment.errors import ConfigError

log = logging.getLogger(__name__)

# The prefix of the shadow networks' state-dict keys (the submodule is called ``ema``).
EMA_PREFIX = "ema."
# TensorFlow's ExponentialMovingAverage warm-up: beta_t = min(decay, (1 + t) / (10 + t)).
_WARMUP_OFFSET = 10.0


def check_decay(decay: float, owner: str) -> None:
    """Refuse an ``ema`` decay outside [0, 1) (0 = off)."""
    if not 0.0 <= float(decay) < 1.0:
        raise ConfigError(
            f"{owner}: ema must be in [0, 1) (0 = no EMA generator; 0.999 averages over "
            f"about the last 1000 steps), got {decay}"
        )


class GeneratorEMA(nn.Module):
    """Shadow copies of named generator networks and their update count.

    Args:
        nets: the live networks by attribute name (copied now: the average starts at the
            initial weights).
        decay: the EMA decay per step, in (0, 1).
    """

    def __init__(self, nets: Mapping[str, nn.Module], decay: float) -> None:
        super().__init__()
        self.decay = float(decay)
        self.nets = nn.ModuleDict({k: copy.deepcopy(v).requires_grad_(False) for k, v in nets.items()})
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64))

    def beta(self, t: int) -> float:
        """The weight on the old average at update ``t`` (0-based)."""
        return min(self.decay, (1.0 + t) / (_WARMUP_OFFSET + t))

    @torch.no_grad()
    def update(self, live: Mapping[str, nn.Module]) -> None:
        """One EMA step towards the ``live`` networks (same names and structure)."""
        beta = self.beta(int(self.updates))
        for name, shadow in self.nets.items():
            net = live[name]
            for p_avg, p in zip(shadow.parameters(), net.parameters(), strict=True):
                p_avg.lerp_(p.detach().to(p_avg.dtype), 1.0 - beta)
            for b_avg, b in zip(shadow.buffers(), net.buffers(), strict=True):
                b_avg.copy_(b)
        self.updates += 1


def attach_ema(module: nn.Module, names: tuple[str, ...], decay: float) -> None:
    """Give ``module`` a `GeneratorEMA` of its networks ``names`` as ``module.ema``
    (nothing when ``decay`` is 0). Call it once the networks hold their initial weights."""
    if decay > 0:
        module.ema = GeneratorEMA({n: getattr(module, n) for n in names}, decay)


def ema_of(module: nn.Module) -> GeneratorEMA | None:
    """``module``'s `GeneratorEMA`, or None when it has none."""
    ema = module._modules.get("ema")
    return ema if isinstance(ema, GeneratorEMA) else None


def update_ema(module: nn.Module) -> None:
    """After a training step: move ``module``'s EMA (if any) towards its live generators.

    The live networks are read from ``module``'s submodules, not its attributes: under
    torchrun an attribute is the DDP wrapper during a step (same parameters, one level down).
    """
    ema = ema_of(module)
    if ema is not None:
        ema.update({name: module._modules[name] for name in ema.nets})


def complete_ema_state(
    module: nn.Module, state: Mapping[str, Tensor], where: object
) -> Mapping[str, Tensor]:
    """``state`` with the ``ema.*`` entries ``module`` expects, filled from the raw
    generators when the checkpoint has none (written before EMA, or with ``ema = 0``).

    Logs one line naming ``where`` when it fills them: samples then come from the raw
    generator, as they did when the checkpoint was written.
    """
    ema = ema_of(module)
    if ema is None or any(k.startswith(EMA_PREFIX) for k in state):
        return state
    filled = dict(state)
    for key in ema.state_dict():
        full = EMA_PREFIX + key
        if key == "updates":
            filled[full] = torch.zeros((), dtype=torch.int64)
            continue
        raw = key.split(".", 1)[1]  # "nets.netG.main.0.weight" -> "netG.main.0.weight"
        if raw in state:
            filled[full] = state[raw]
    log.info("%s: no EMA generator in this checkpoint; sampling uses the raw generator", where)
    return filled


__all__ = [
    "EMA_PREFIX",
    "GeneratorEMA",
    "attach_ema",
    "check_decay",
    "complete_ema_state",
    "ema_of",
    "update_ema",
]
