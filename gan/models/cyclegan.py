"""CycleGAN (Zhu et al. 2017): unpaired translation between two CT domains.

Two ResNet generators (``g_ab``: A -> B, ``g_ba``: B -> A) and two 70x70 PatchGAN
discriminators (``d_a`` judges domain-A images, ``d_b`` domain-B images), trained with
the least-squares GAN loss, cycle consistency (lambda = 10), identity loss (0.5 lambda),
a pool of 50 past fakes per discriminator and Adam(2e-4, beta1 = 0.5), as in the paper
and junyanz's ``cycle_gan_model.py``.

Labels carry over unchanged: a translated slice keeps its mask, boxes, id and patient.
Whether the lesion really survives translation is measured with
`gan.evaluate.preservation.lesion_preservation`, not assumed.

The model sees HU only through its window (``Config.window``, default 40/200 for head
CT, i.e. -60..140 HU). Pixels whose *input* HU lie outside the window (bone, air, fat)
keep their input HU in `CycleGAN.translate`: the generator never saw them, so
anything it put there would be invented (we do not hallucinate bone).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from augment.errors import ConfigError, DataError
from augment.sample import Sample
from augment.window import WINDOWS, Window
from gan.base import GanModule, LinearDecayLR
from gan.networks.patchgan import NLayerDiscriminator, check_depth
from gan.networks.resnet import N_DOWNSAMPLING, ResnetGenerator, init_normal_
from gan.train.diffaugment import diff_augment, parse_policy
from gan.train.distributed import WHOLE_BATCH, BatchShard
from gan.train.ema import attach_ema, check_decay
from gan.train.optim import adam

log = logging.getLogger(__name__)

DIRECTIONS = ("AB", "BA")
_MULTIPLE = 2**N_DOWNSAMPLING  # generator inputs are padded to a multiple of this
# The generator's residual blocks and instance norms need at least 2x2 pixels after its
# N_DOWNSAMPLING halvings.
MIN_SIDE = 2 * _MULTIPLE


@dataclass(frozen=True)
class CycleGANConfig:
    """CycleGAN options; defaults are the paper's (256 px: 9 residual blocks).

    Attributes:
        ngf: generator width (filters of its first convolution).
        ndf: discriminator width.
        n_blocks: residual blocks per generator (paper: 9 at 256 px, 6 at <= 128 px).
        n_layers_d: PatchGAN stride-2 layers (3 gives the 70x70 receptive field).
        lambda_cycle: weight of the cycle-consistency L1 loss.
        lambda_identity: identity L1 weight, relative to ``lambda_cycle``.
        pool_size: past fakes kept per discriminator (0 = no pool).
        window: ``(center, width)`` HU window mapped to the model's [-1, 1].
        direction: ``"AB"`` or ``"BA"``, the translation `synthesize` performs.
        lr: Adam learning rate.
        beta1: Adam beta1.
        n_steps_constant: steps at the full learning rate before the decay starts.
        n_steps_decay: steps of linear decay towards 0 after ``n_steps_constant``; 0 keeps
            the rate constant. The paper trains 100 epochs constant + 100 decaying, i.e.
            ``n_steps_constant = n_steps_decay = steps / 2``.
        init_std: std of the N(0, std) weight initialisation.
        diffaugment: DiffAugment policy for what both discriminators see, real slices and
            (pooled) translations alike (`gan.train.diffaugment`; ``""`` = off, the paper).
            Default off: on the 64 px head phantom (60 slices a domain, 53 lesions, the
            ``cpu`` preset's networks, 1000 steps, seed 0) ``gan evaluate`` read contrast
            retained 1.32 and a mean |HU change| in the lesions of 12.7 HU without it, and
            1.87 and 20.4 HU with ``"translation,cutout"`` and ``ema = 0.999``: the lesions
            moved further from their input HU.
        ema: decay per step of the moving average of both generators, which ``translate``
            and synthesis use (`gan.train.ema`; 0 = the raw generators, the paper; default
            0, measured with ``diffaugment`` above).
    """

    ngf: int = 64
    ndf: int = 64
    n_blocks: int = 9
    n_layers_d: int = 3
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5
    pool_size: int = 50
    # (center, width); the data's anatomy sets its model window (gan.train.data.data_defaults).
    window: tuple[float, float] = WINDOWS["head-model"].as_pair()
    direction: str = "AB"
    lr: float = 2e-4
    beta1: float = 0.5
    n_steps_constant: int = 0
    n_steps_decay: int = 0
    init_std: float = 0.02
    diffaugment: str = ""
    ema: float = 0.0

    def __post_init__(self) -> None:
        parse_policy(self.diffaugment, owner="cyclegan: diffaugment")
        check_decay(self.ema, "cyclegan")
        if self.direction not in DIRECTIONS:
            raise ConfigError(
                f"cyclegan: direction must be one of {DIRECTIONS}, got {self.direction!r}"
            )
        for name in ("ngf", "ndf", "n_layers_d"):
            if getattr(self, name) < 1:
                raise ConfigError(f"cyclegan: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("n_blocks", "pool_size", "n_steps_constant", "n_steps_decay"):
            if getattr(self, name) < 0:
                raise ConfigError(f"cyclegan: {name} must be >= 0, got {getattr(self, name)}")
        for name in ("lambda_cycle", "lambda_identity"):
            if getattr(self, name) < 0:
                raise ConfigError(f"cyclegan: {name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"cyclegan: lr must be > 0, got {self.lr}")
        Window(*self.window)  # raises ConfigError for a bad width


class ImagePool(nn.Module):
    """History of generated images shown to a discriminator (Shrivastava et al. 2017).

    junyanz's ``ImagePool``: until full, every fake is stored and returned; then each
    fake is, with probability 1/2, swapped with a random stored one (the stored one is
    returned), else returned as is. Draws come from the global torch CPU RNG, which the
    trainer reseeds every step. The contents travel in ``state_dict()`` (extra state),
    so a resumed run sees the same history.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        # Non-persistent buffer: moves with .to(device); saved via get_extra_state.
        self.register_buffer("images", torch.empty(0), persistent=False)

    def __len__(self) -> int:
        return len(self.images)

    def query(self, fakes: Tensor, shard: BatchShard = WHOLE_BATCH) -> Tensor:
        """The images the discriminator sees instead of ``fakes`` (same shape).

        ``fakes`` is ``shard``'s part of the batch (under torchrun): the pool takes the
        whole batch's (`BatchShard.gather`) and returns this part of its answer, so every
        process keeps the pool, and draws the swaps, that one process would.
        """
        if self.size == 0:
            return fakes
        fakes = shard.gather(fakes.detach())
        # CPU draws, turned into Python numbers: no device synchronisation.
        swap = (torch.rand(len(fakes)) > 0.5).tolist()
        slots = torch.randint(0, self.size, (len(fakes),)).tolist()
        out = []
        for k, image in enumerate(fakes):
            if len(self.images) < self.size:
                stored = self.images if len(self.images) else self.images.new_empty(0, *image.shape)
                self.images = torch.cat([stored, image[None]])
                out.append(image)
            elif swap[k]:
                out.append(self.images[slots[k]].clone())
                self.images[slots[k]] = image
            else:
                out.append(image)
        return shard.local(torch.stack(out))

    def get_extra_state(self) -> Tensor:
        return self.images.detach()

    def set_extra_state(self, state: Tensor) -> None:
        self.images = state.detach().to(self.images.device).clone()


def _set_requires_grad(nets: Sequence[nn.Module], flag: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)


def _lsgan(prediction: Tensor, real: bool) -> Tensor:
    target = torch.ones_like(prediction) if real else torch.zeros_like(prediction)
    return F.mse_loss(prediction, target)


class CycleGAN(LinearDecayLR, GanModule):
    """CycleGAN as a `GanModule`: ``prepare(data_a, data_b)``, ``training_step``,
    ``translate`` and ``synthesize`` (translated hosts, labels unchanged).

    Initial weights draw from the global torch RNG (as ``nn.Conv2d`` itself does), so
    seed it before construction for reproducible initial weights.
    """

    name = "cyclegan"
    Config = CycleGANConfig
    unpaired = True
    paired_reference = "target-domain"
    translates_hosts = True

    def __init__(self, cfg: CycleGANConfig | None = None) -> None:
        cfg = cfg if cfg is not None else CycleGANConfig()
        super().__init__(cfg)
        self.window = Window(*cfg.window)
        self.g_ab = ResnetGenerator(1, 1, ngf=cfg.ngf, n_blocks=cfg.n_blocks)
        self.g_ba = ResnetGenerator(1, 1, ngf=cfg.ngf, n_blocks=cfg.n_blocks)
        self.d_a = NLayerDiscriminator(1, ndf=cfg.ndf, n_layers=cfg.n_layers_d, norm="instance")
        self.d_b = NLayerDiscriminator(1, ndf=cfg.ndf, n_layers=cfg.n_layers_d, norm="instance")
        for net in (self.g_ab, self.g_ba, self.d_a, self.d_b):
            init_normal_(net, cfg.init_std)
        attach_ema(self, ("g_ab", "g_ba"), cfg.ema)
        self.policy = parse_policy(cfg.diffaugment)
        self.pool_a = ImagePool(cfg.pool_size)  # past fake A images, shown to d_a
        self.pool_b = ImagePool(cfg.pool_size)
        betas = (cfg.beta1, 0.999)
        self.optimizers = {
            "G": adam(itertools.chain(self.g_ab.parameters(), self.g_ba.parameters()), cfg.lr, betas),
            "D": adam(itertools.chain(self.d_a.parameters(), self.d_b.parameters()), cfg.lr, betas),
        }
        self._a: Tensor | None = None
        self._b: Tensor | None = None

    # ---- training --------------------------------------------------------------
    @classmethod
    def check_data(
        cls,
        cfg: CycleGANConfig,
        data: Sequence[Sample],
        data_b: Sequence[Sample] | None,
        *,
        folder: str = "data",
        folder_b: str = "data_b",
    ) -> None:
        """One slice size in both domains, and one the networks can take: sides that are
        multiples of 4 and >= `MIN_SIDE` (the generator's two fixed 2x downsamplings),
        and a discriminator no deeper than the slices allow (``n_layers_d``)."""
        if not data_b:
            raise DataError(
                "cyclegan: unpaired training needs domain B slices; give their dataset "
                "folder (--data-b)"
            )
        shapes = {}
        for where, domain, samples in ((folder, "A", data), (folder_b, "B", data_b)):
            found = sorted({s.image.shape for s in samples})
            if len(found) > 1:
                raise DataError(
                    f"{where}: domain {domain} slices of several sizes ({found[0]} and "
                    f"{found[1]}); resample them to one size first"
                )
            shapes[domain] = found[0] if found else None
        a, b = shapes["A"], shapes["B"]
        if a is not None and b is not None and a != b:
            raise DataError(
                f"{folder_b}: domain B slices are {b[0]}x{b[1]} px, but the domain A slices "
                f"of {folder} are {a[0]}x{a[1]} px; CycleGAN translates between slices of one "
                "size: import both at one --size"
            )
        shape = a or b
        if shape is None:
            return
        if shape[0] % _MULTIPLE or shape[1] % _MULTIPLE or min(shape) < MIN_SIDE:
            raise DataError(
                f"{folder}: slices are {shape[0]}x{shape[1]} px; CycleGAN's generator halves "
                f"them {N_DOWNSAMPLING} times, so sides must be multiples of {_MULTIPLE} and at "
                f"least {MIN_SIDE} px"
            )
        too_deep = check_depth(cfg.n_layers_d, min(shape), of=folder)
        if too_deep:
            raise ConfigError(f"cyclegan: {too_deep}")

    @classmethod
    def batch_limit(
        cls, cfg: CycleGANConfig, data: Sequence[Sample], data_b: Sequence[Sample] | None
    ) -> tuple[int, str] | None:
        """Each domain's slices are drawn independently: a batch larger than the smaller
        domain repeats its slices in every step."""
        if not data_b:
            return None
        if len(data_b) < len(data):
            return len(data_b), "domain B slices (--data-b)"
        return len(data), "domain A slices"

    def _to_tensor(self, samples: Sequence[Sample], domain: str) -> Tensor:
        shape = samples[0].image.shape
        for s in samples:
            where = s.meta.get("source") or s.id or "sample"
            if s.image.shape != shape:
                raise DataError(
                    f"{where}: domain {domain} slice is {s.image.shape}, others are {shape}; "
                    "resample to one size first"
                )
            if shape[0] % _MULTIPLE or shape[1] % _MULTIPLE:
                raise DataError(
                    f"{where}: CycleGAN needs sides that are multiples of {_MULTIPLE}, got {shape}"
                )
        x = np.stack([self.window.to_model(s.image) for s in samples]).astype(np.float32)
        return torch.from_numpy(x)[:, None]

    def prepare(self, data: Sequence[Sample], data_b: Sequence[Sample] | None = None) -> None:
        """Window the unpaired domain-A (``data``) and domain-B (``data_b``) slices."""
        if not data:
            raise DataError("cyclegan: no domain A training slices")
        if not data_b:
            raise DataError(
                "cyclegan: unpaired training needs domain B slices (data_b); none given"
            )
        self._a = self._to_tensor(data, "A")
        self._b = self._to_tensor(data_b, "B")
        log.info("cyclegan: %d domain A and %d domain B slices", len(self._a), len(self._b))

    def make_batch(self, rng: np.random.Generator, batch_size: int) -> dict[str, Tensor]:
        """``{"A": (B, 1, H, W), "B": ...}``, A and B drawn independently (unpaired)."""
        if self._a is None or self._b is None:
            raise RuntimeError("cyclegan: call prepare() before make_batch()")
        ia = torch.from_numpy(rng.integers(0, len(self._a), size=batch_size))
        ib = torch.from_numpy(rng.integers(0, len(self._b), size=batch_size))
        return {"A": self._a[ia], "B": self._b[ib]}


    def _judge(self, d: nn.Module, x: Tensor) -> Tensor:
        """``d``'s verdict on ``x``, DiffAugment-ed first when ``diffaugment`` is on."""
        return d(diff_augment(x, self.policy, intensity_channels=(0,), shard=self.shard))

    def _d_loss(self, d: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
        # Halved so D learns more slowly than G (paper, section 7.1).
        return 0.5 * (_lsgan(self._judge(d, real), True) + _lsgan(self._judge(d, fake.detach()), False))

    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor | float]:
        """G step with both discriminators frozen, then D step on pooled fakes
        (the order of junyanz's ``CycleGANModel.optimize_parameters``)."""
        cfg = self.cfg
        real_a, real_b = batch["A"], batch["B"]
        opt_g, opt_d = self.optimizers["G"], self.optimizers["D"]

        fake_b = self.g_ab(real_a)
        rec_a = self.g_ba(fake_b)
        fake_a = self.g_ba(real_b)
        rec_b = self.g_ab(fake_a)

        _set_requires_grad((self.d_a, self.d_b), False)
        opt_g.zero_grad(set_to_none=True)
        adv_ab = _lsgan(self._judge(self.d_b, fake_b), True)
        adv_ba = _lsgan(self._judge(self.d_a, fake_a), True)
        cycle_a = F.l1_loss(rec_a, real_a) * cfg.lambda_cycle
        cycle_b = F.l1_loss(rec_b, real_b) * cfg.lambda_cycle
        if cfg.lambda_identity > 0:
            # A generator fed an image already in its target domain should leave it alone.
            w = cfg.lambda_cycle * cfg.lambda_identity
            idt_ab = F.l1_loss(self.g_ab(real_b), real_b) * w
            idt_ba = F.l1_loss(self.g_ba(real_a), real_a) * w
        else:
            idt_ab = idt_ba = real_a.new_zeros(())
        loss_g = adv_ab + adv_ba + cycle_a + cycle_b + idt_ab + idt_ba
        self.backward(loss_g)
        self.optimizer_step(opt_g)
        _set_requires_grad((self.d_a, self.d_b), True)

        opt_d.zero_grad(set_to_none=True)
        loss_d_a = self._d_loss(self.d_a, real_a, self.pool_a.query(fake_a, self.shard))
        loss_d_b = self._d_loss(self.d_b, real_b, self.pool_b.query(fake_b, self.shard))
        self.backward(loss_d_a + loss_d_b)
        self.optimizer_step(opt_d)

        losses = {
            "G": loss_g,
            "G_AB": adv_ab,
            "G_BA": adv_ba,
            "cycle_A": cycle_a,
            "cycle_B": cycle_b,
            "idt_AB": idt_ab,
            "idt_BA": idt_ba,
            "D_A": loss_d_a,
            "D_B": loss_d_b,
        }
        return {k: v.detach() for k, v in losses.items()}

    # ---- synthesis -------------------------------------------------------------
    def _generate(self, net: nn.Module, images_hu: np.ndarray) -> np.ndarray:
        """(N, H, W) HU -> (N, H, W) HU through ``net``, reflect-padded to a multiple of 4."""
        x = torch.from_numpy(self.window.to_model(images_hu).astype(np.float32))[:, None]
        h, w = images_hu.shape[1:]
        ph, pw = -h % _MULTIPLE, -w % _MULTIPLE
        x = x.to(self.device)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect")
        y = net(x)[:, 0, :h, :w].float().cpu().numpy()
        return self.window.to_hu(y).astype(np.float32)

    def translate(
        self, samples: Sequence[Sample], direction: str | None = None, *, batch_size: int = 8
    ) -> list[Sample]:
        """Translate slices to the other domain; masks, boxes, ids and patients unchanged.

        Inside the model window the output is the generator's (back in HU); where the
        input HU lie outside it (bone, air, fat) the input HU are kept exactly.

        Args:
            samples: slices of the source domain (any size; sides need not be multiples
                of 4, they are reflect-padded and cropped back).
            direction: ``"AB"`` or ``"BA"``; default ``Config.direction``.
            batch_size: slices per forward pass (instance norm: results do not depend
                on the grouping beyond floating-point rounding).

        Returns:
            One `Sample` per input, in order; ``meta`` adds ``synthetic``, ``generator``,
            ``host_id``, ``direction``, ``window`` and ``kept_outside_window_px``.
        """
        direction = direction or self.cfg.direction
        if direction not in DIRECTIONS:
            raise ConfigError(f"cyclegan: direction must be one of {DIRECTIONS}, got {direction!r}")
        net = self.generator_net("g_ab" if direction == "AB" else "g_ba")
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, s in enumerate(samples):
            by_shape.setdefault(s.image.shape, []).append(i)
        images: list[np.ndarray | None] = [None] * len(samples)
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                for indices in by_shape.values():
                    for start in range(0, len(indices), batch_size):
                        chunk = indices[start : start + batch_size]
                        hu = np.stack([samples[i].image for i in chunk])
                        for i, out in zip(chunk, self._generate(net, hu), strict=True):
                            images[i] = out
        finally:
            self.train(was_training)
        result = []
        for s, out in zip(samples, images, strict=True):
            inside = (s.image >= self.window.low) & (s.image <= self.window.high)
            meta = dict(s.meta)
            if "source" in meta:  # the file we read is the host's, not this image's
                meta["host_source"] = meta.pop("source")
            meta.update(
                synthetic=True,
                generator=self.name,
                host_id=s.id,
                direction=direction,
                window=[self.window.center, self.window.width],
                kept_outside_window_px=int((~inside).sum()),
            )
            result.append(
                Sample(
                    image=np.where(inside, out, s.image).astype(np.float32),
                    mask=s.mask.copy(),
                    boxes=s.boxes.copy(),
                    labels=s.labels.copy(),
                    meta=meta,
                )
            )
        return result

    def quality_probe(
        self, data: Sequence[Sample], data_b: Sequence[Sample] | None, *, seed: int
    ) -> dict[str, float]:
        """Lesion preservation of a few translated training lesion slices
        (``contrast_retained``...; `gan.train.probes.translation_probe`; no random draw)."""
        from gan.train.probes import translation_probe

        return translation_probe(self, data, data_b)

    def synthesize(
        self, n: int, *, rng: np.random.Generator, hosts: Sequence[Sample]
    ) -> list[Sample]:
        """Translate ``n`` hosts (source domain of ``Config.direction``) drawn with ``rng``.

        Hosts are drawn without replacement while possible (whole permutations, then
        the rest); the generator is deterministic, so a host drawn twice gives the same
        image twice. Ids are ``syn_00000``...; patient and host ids are the host's.
        """
        if n < 0:
            raise ConfigError(f"cyclegan: cannot synthesize {n} samples")
        if not hosts:
            raise ConfigError("cyclegan: synthesis needs host slices to translate")
        rounds = -(-n // len(hosts))
        order = [int(i) for _ in range(rounds) for i in rng.permutation(len(hosts))][:n]
        out = self.translate([hosts[i] for i in order], self.cfg.direction)
        for k, (i, s) in enumerate(zip(order, out, strict=True)):
            s.meta["id"] = f"syn_{k:05d}"
            s.meta["patient_id"] = hosts[i].patient_id
            s.meta["host_index"] = i
        return out
