"""pix2pix (Isola et al. 2017), mask-conditioned: paint a realistic lesion into a given mask.

The generator is a U-Net that sees ``[slice with the lesion area erased, one-hot lesion
mask per class]`` and returns the whole slice; a 70x70 PatchGAN judges ``(input,
output)`` pairs. Losses as in the paper and junyanz's ``pix2pix_model.py``: the
vanilla conditional GAN loss (``BCEWithLogits``, D's loss halved) plus ``lambda = 100``
times L1 to the real slice, Adam(2e-4, beta1 = 0.5), N(0, 0.02) initial weights.

Erasing. The erased area is the lesion dilated by ``erase_dilate_px`` (a disk), so the
generator also paints the lesion's rim and the seam lies in tissue. Host pixels whose
HU lie outside the model window (bone, air) are never erased unless they are lesion:
the generator can only produce HU inside the window, and the skull next to an
epidural haematoma must stay bone. Erased pixels are set to the median HU of the
in-window tissue in a ring around the area (the window centre when there is none),
a neutral local value that hides the lesion's intensity but not the tissue type.

Compositing. Outside the erased area every output pixel is the host's HU, bit for
bit; inside it the generator's output, back in HU. The L1 loss covers the whole image
as in the paper; ``l1_lesion_weight > 1`` weights the erased area more.

Synthesis. A host slice gets 1-2 lesion masks from the *mask bank* (every lesion
component seen in ``prepare``, kept in the checkpoint), each flipped, scaled
(0.7-1.3) and rotated (0-360 degrees) with nearest-neighbour interpolation and placed
uniformly at random inside `augment.anatomy.allowed_region`, clear of the host's
lesions. Only the new lesions are erased and conditioned on; the host's own lesions
stay as they are. The label is the host's mask plus the new masks.

Inference runs in eval mode (batch-norm running statistics, no dropout), unlike the
paper's test-time batch statistics and dropout: a slice's output then depends only on
its own input, and sampling never changes the model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from augment.anatomy import allowed_region, class_anchor, lesion_regions
from augment.errors import CheckpointError, ConfigError, DataError
from augment.sample import Sample
from augment.window import WINDOWS, Window
from gan.base import GanModule, LinearDecayLR
from gan.models.pix2pix_masks import MaskBank, build_bank, condition, erase, place_lesions
from gan.networks.patchgan import NORMS, NLayerDiscriminator, check_depth
from gan.networks.resnet import init_normal_
from gan.networks.unet import MIN_DOWNS, UnetGenerator
from gan.train.diffaugment import diff_augment, parse_policy
from gan.train.ema import attach_ema, check_decay
from gan.train.optim import adam

log = logging.getLogger(__name__)

# Host meta that still describes a synthetic slice made from it.
HOST_META = ("spacing", "slice_index", "slice_thickness_mm", "kind", "domain")


@dataclass(frozen=True)
class Pix2PixConfig:
    """pix2pix options; network and loss defaults are the paper's (256 px).

    Attributes:
        size: side of the square slices it trains on and synthesizes (pixels).
        num_downs: U-Net downsamplings; None derives ``log2(size)`` (1x1 bottleneck).
        ngf: generator width (filters of its first convolution).
        ndf: discriminator width.
        n_layers_d: PatchGAN stride-2 layers (3 gives the 70x70 receptive field).
        norm: ``"batch"`` (paper), ``"instance"`` or ``"none"``.
        use_dropout: Dropout(0.5) in the middle decoder levels (paper: on).
        lambda_l1: weight of the L1 loss.
        l1_lesion_weight: relative L1 weight inside the erased area (1 = the paper's
            plain whole-image L1).
        window: ``(center, width)`` HU window mapped to the model's [-1, 1].
        anatomy: `augment.anatomy.allowed_region` kind where new lesions may go.
        n_classes: lesion classes (one-hot condition channels); masks hold 0..n_classes.
        erase_dilate_px: radius of the disk the lesion is dilated by before erasing.
        train_on_lesion_free: also train on lesion-free slices (empty mask, nothing
            erased), which teaches "no mask, no lesion".
        flip: mirror training pairs left-right with probability 1/2 (the paper's mirroring).
        lesions_range: ``(min, max)`` new lesions per synthetic slice.
        scale_range: bank masks are scaled by a factor drawn from this range.
        rotation_range: bank masks are rotated by an angle (degrees) drawn from this range.
        max_tries: host draws per synthetic slice before giving up on placing a lesion.
        subtype_regions: place each new lesion's centre where its subtype belongs
            (`augment.anatomy.lesion_regions`: IVH in a ventricle, EDH/SDH/SAH near the
            inner table, IPH in parenchyma), by the class names of the training data.
            Off: anywhere in the allowed region.
        lr: Adam learning rate.
        beta1: Adam beta1.
        n_steps_constant: steps at the full learning rate before the decay starts.
        n_steps_decay: steps of linear decay to 0 after that; 0 keeps the rate constant
            (junyanz: 100 epochs constant + 100 decaying).
        init_std: std of the N(0, std) weight initialisation.
        diffaugment: DiffAugment policy for the (condition, slice) pairs D judges
            (`gan.train.diffaugment`; ``""`` = off). Condition and slice are augmented
            together: one shift and one cutout for all channels, ``color`` on the erased
            slice and the output alike, never on the mask channels. Default off, as the
            paper: not measured for pix2pix yet (its L1 term ties every output to a real
            slice, the case DiffAugment was not made for).
        ema: decay per step of the generator's moving average that synthesis and
            ``reconstruct`` use (`gan.train.ema`; 0 = the raw generator). Default 0, as
            the paper (not measured for pix2pix yet).
    """

    size: int = 256
    num_downs: int | None = None
    ngf: int = 64
    ndf: int = 64
    n_layers_d: int = 3
    norm: str = "batch"
    use_dropout: bool = True
    lambda_l1: float = 100.0
    l1_lesion_weight: float = 1.0
    # (center, width); the data's anatomy sets its model window (gan.train.data.data_defaults).
    window: tuple[float, float] = WINDOWS["head-model"].as_pair()
    anatomy: str = "head-ich"
    n_classes: int = 5
    erase_dilate_px: int = 3
    train_on_lesion_free: bool = False
    flip: bool = True
    lesions_range: tuple[int, int] = (1, 2)
    scale_range: tuple[float, float] = (0.7, 1.3)
    rotation_range: tuple[float, float] = (0.0, 360.0)
    max_tries: int = 20
    subtype_regions: bool = True
    lr: float = 2e-4
    beta1: float = 0.5
    n_steps_constant: int = 0
    n_steps_decay: int = 0
    init_std: float = 0.02
    diffaugment: str = ""
    ema: float = 0.0

    def __post_init__(self) -> None:
        def bad(msg: str) -> ConfigError:
            return ConfigError(f"pix2pix: {msg}")

        parse_policy(self.diffaugment, owner="pix2pix: diffaugment")
        check_decay(self.ema, "pix2pix")

        downs = self.downs
        if downs < MIN_DOWNS:
            raise bad(f"num_downs must be >= {MIN_DOWNS} (size >= {2**MIN_DOWNS}), got {downs}")
        if self.size < 1 or self.size % 2**downs:
            raise bad(
                f"size {self.size} is not a multiple of 2**num_downs = {2**downs} "
                "(use a power-of-two size, or set num_downs)"
            )
        for name in ("ngf", "ndf", "n_layers_d", "n_classes", "max_tries"):
            if getattr(self, name) < 1:
                raise bad(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("erase_dilate_px", "n_steps_constant", "n_steps_decay"):
            if getattr(self, name) < 0:
                raise bad(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.norm not in NORMS:
            raise bad(f"norm must be one of {NORMS}, got {self.norm!r}")
        too_deep = check_depth(self.n_layers_d, self.size)
        if too_deep:
            raise bad(too_deep)
        if self.lambda_l1 < 0 or self.l1_lesion_weight < 0:
            raise bad("lambda_l1 and l1_lesion_weight must be >= 0")
        lo, hi = self.lesions_range
        if not 1 <= lo <= hi:
            raise bad(f"lesions_range must satisfy 1 <= min <= max, got {self.lesions_range}")
        if not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise bad(f"scale_range must satisfy 0 < min <= max, got {self.scale_range}")
        if self.rotation_range[0] > self.rotation_range[1]:
            raise bad(f"rotation_range must satisfy min <= max, got {self.rotation_range}")
        if not self.lr > 0:
            raise bad(f"lr must be > 0, got {self.lr}")
        Window(*self.window)  # raises ConfigError for a bad width

    @property
    def downs(self) -> int:
        """``num_downs``, or ``log2(size)`` rounded down when it is None."""
        return self.num_downs if self.num_downs is not None else int(self.size).bit_length() - 1


class _Held(nn.Module):
    """A CPU tensor of any shape that travels in ``state_dict()`` as extra state (a
    buffer would refuse to load a checkpoint's mask bank of another size)."""

    def __init__(self, value: Tensor) -> None:
        super().__init__()
        self.value = value

    def get_extra_state(self) -> Tensor:
        return self.value

    def set_extra_state(self, state: Tensor) -> None:
        self.value = state.detach().cpu().clone()


def _encode_strings(strings: list[str]) -> Tensor:
    # Checkpoint values must be tensors here (`GanModule.checkpoint` detaches each one).
    return torch.tensor(list(json.dumps(strings).encode()), dtype=torch.uint8)


def _gan_loss(logits: Tensor, real: bool) -> Tensor:
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


class Pix2Pix(LinearDecayLR, GanModule):
    """Mask-conditioned pix2pix as a `GanModule`: ``prepare``, ``training_step``,
    ``synthesize`` (new lesions painted into host slices) and ``reconstruct``.

    Initial weights draw from the global torch RNG (as ``nn.Conv2d`` itself does), so
    seed it before construction for reproducible initial weights.
    """

    name = "pix2pix"
    Config = Pix2PixConfig
    paired_reference = "own-mask"

    def __init__(self, cfg: Pix2PixConfig | None = None) -> None:
        cfg = cfg if cfg is not None else Pix2PixConfig()
        super().__init__(cfg)
        self.window = Window(*cfg.window)
        in_nc = 1 + cfg.n_classes  # erased slice + one-hot masks
        self.net_g = UnetGenerator(
            in_nc, 1, num_downs=cfg.downs, ngf=cfg.ngf, norm=cfg.norm, use_dropout=cfg.use_dropout
        )
        # D judges the condition and the slice together: (input, output) concatenated.
        self.net_d = NLayerDiscriminator(
            in_nc + 1, ndf=cfg.ndf, n_layers=cfg.n_layers_d, norm=cfg.norm
        )
        for net in (self.net_g, self.net_d):
            init_normal_(net, cfg.init_std)
        attach_ema(self, ("net_g",), cfg.ema)
        self.policy = parse_policy(cfg.diffaugment)
        betas = (cfg.beta1, 0.999)
        self.optimizers = {
            "G": adam(self.net_g.parameters(), cfg.lr, betas),
            "D": adam(self.net_d.parameters(), cfg.lr, betas),
        }
        # The mask bank (filled by prepare, restored by load): every lesion component of
        # the training data as zero-padded crops, their sizes, classes and source ids.
        self.bank_masks = _Held(torch.zeros(0, 1, 1, dtype=torch.uint8))
        self.bank_shapes = _Held(torch.zeros(0, 2, dtype=torch.int64))
        self.bank_classes = _Held(torch.zeros(0, dtype=torch.int64))
        self.bank_sources = _Held(_encode_strings([]))
        self._train: dict[str, Tensor] | None = None


    @property
    def mask_bank(self) -> MaskBank:
        """The lesion masks synthesis places (empty before `prepare` or `load`)."""
        return MaskBank(
            self.bank_masks.value.numpy(),
            self.bank_shapes.value.numpy(),
            self.bank_classes.value.numpy(),
            json.loads(bytes(self.bank_sources.value.tolist()).decode()),
        )

    # ---- inputs ------------------------------------------------------------------
    @classmethod
    def check_data(
        cls,
        cfg: Pix2PixConfig,
        data: Sequence[Sample],
        data_b: Sequence[Sample] | None,
        *,
        folder: str = "data",
        folder_b: str = "data_b",
    ) -> None:
        """Every slice ``size`` x ``size`` (the network depth vs size is checked by the
        config itself); the first other one is named."""
        odd = next((s for s in data if s.image.shape != (cfg.size, cfg.size)), None)
        if odd is not None:
            h, w = odd.image.shape
            raise DataError(
                f"pix2pix: size = {cfg.size}, but slice {odd.id} of {folder} is {h}x{w} px; "
                "set size to the slices' side, or resample them to one size (data import --size)"
            )

    @classmethod
    def batch_limit(
        cls, cfg: Pix2PixConfig, data: Sequence[Sample], data_b: Sequence[Sample] | None
    ) -> tuple[int, str] | None:
        """The training pairs `prepare` makes: a larger batch repeats whole slices in
        every step (more memory, nothing more to learn from)."""
        if cfg.train_on_lesion_free:
            return len(data), "training slices"
        return sum(1 for s in data if s.has_lesion), "lesion slices (its training pairs)"

    def _check(self, s: Sample, what: str) -> None:
        where = s.meta.get("source") or s.id or "sample"
        size = self.cfg.size
        if s.image.shape != (size, size):
            raise DataError(
                f"{where}: {what} slice is {s.image.shape}, the model works on {size}x{size} "
                "(set size in the pix2pix config, or resample the slices)"
            )
        if int(s.mask.max(initial=0)) > self.cfg.n_classes:
            raise DataError(
                f"{where}: mask class {int(s.mask.max())} exceeds n_classes = {self.cfg.n_classes}"
            )

    def condition(
        self, image_hu: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """The generator input for painting lesions ``mask`` into ``image_hu``; see
        `gan.models.pix2pix_masks.condition`."""
        cfg = self.cfg
        return condition(image_hu, mask, cfg.n_classes, cfg.erase_dilate_px, self.window)

    # ---- training ------------------------------------------------------------------
    def prepare(self, data: Sequence[Sample], data_b: Sequence[Sample] | None = None) -> None:
        """Training pairs from the lesion slices of ``data`` and the mask bank.

        Raises:
            ConfigError: ``data_b`` is given (pix2pix learns from paired slices only).
            DataError: no slice has a lesion, a slice is not ``size x size``, or a
                mask class exceeds ``n_classes``.
        """
        if data_b:
            raise ConfigError("pix2pix: learns from one labelled dataset; data_b is not used")
        for s in data:
            self._check(s, "training")
        lesion = [s for s in data if s.has_lesion]
        if not lesion:
            raise DataError(f"pix2pix: none of the {len(data)} training slices has a lesion")
        used = list(data) if self.cfg.train_on_lesion_free else lesion
        targets, regions, fills = [], [], []
        for s in used:
            region, fill = erase(s.image, s.mask > 0, self.cfg.erase_dilate_px, self.window)
            targets.append(self.window.to_model(s.image))
            regions.append(region)
            fills.append(self.window.to_model(np.float32(fill)))
        # float16 keeps model space to ~0.05 HU at a 200 HU window and halves memory.
        self._train = {
            "target": torch.from_numpy(np.stack(targets).astype(np.float16)),
            "region": torch.from_numpy(np.stack(regions)),
            "mask": torch.from_numpy(np.stack([s.mask for s in used])),
            "fill": torch.from_numpy(np.asarray(fills, dtype=np.float32)),
        }
        bank = build_bank(lesion)
        self.bank_masks.value = torch.from_numpy(bank.masks)
        self.bank_shapes.value = torch.from_numpy(bank.shapes)
        self.bank_classes.value = torch.from_numpy(bank.classes)
        self.bank_sources.value = _encode_strings(bank.sources)
        log.info(
            "pix2pix: %d training pairs (%d with lesions), mask bank of %d lesions",
            len(used),
            len(lesion),
            len(bank),
        )

    def make_batch(self, rng: np.random.Generator, batch_size: int) -> dict[str, Tensor]:
        """``{"input": (B, 1 + n_classes, H, W), "target": (B, 1, H, W), "region": (B, 1, H, W)}``.

        Pairs drawn with replacement, each mirrored left-right with probability 1/2
        when ``flip`` is on; ``region`` is 1 on the erased area.
        """
        if self._train is None:
            raise RuntimeError("pix2pix: call prepare() before make_batch()")
        t = self._train
        idx = torch.from_numpy(rng.integers(0, len(t["target"]), size=batch_size))
        mirror = rng.random(batch_size) < 0.5 if self.cfg.flip else np.zeros(batch_size, bool)
        target, region, mask = t["target"][idx].float(), t["region"][idx], t["mask"][idx].long()
        m = torch.from_numpy(mirror)
        target = torch.where(m[:, None, None], target.flip(-1), target)
        region = torch.where(m[:, None, None], region.flip(-1), region)
        mask = torch.where(m[:, None, None], mask.flip(-1), mask)
        erased = torch.where(region, t["fill"][idx][:, None, None], target)
        onehot = F.one_hot(mask, self.cfg.n_classes + 1)[..., 1:].permute(0, 3, 1, 2).float()
        return {
            "input": torch.cat([erased[:, None], onehot], 1),
            "target": target[:, None],
            "region": region[:, None].float(),
        }


    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor | float]:
        """D step on (input, real) vs (input, fake), then G step with D frozen
        (junyanz's ``Pix2PixModel.optimize_parameters``)."""
        cfg = self.cfg
        real_a, real_b = batch["input"], batch["target"]
        opt_g, opt_d = self.optimizers["G"], self.optimizers["D"]

        fake_b = self.net_g(real_a)
        # DiffAugment (when on): condition and slice augmented together, as one image;
        # the erased slice (channel 0) and the output (last) are intensities.
        last = real_a.shape[1]

        def judge(pair: Tensor) -> Tensor:
            pair = diff_augment(pair, self.policy, intensity_channels=(0, last), shard=self.shard)
            return self.net_d(pair)

        opt_d.zero_grad(set_to_none=True)
        loss_d_fake = _gan_loss(judge(torch.cat([real_a, fake_b.detach()], 1)), False)
        loss_d_real = _gan_loss(judge(torch.cat([real_a, real_b], 1)), True)
        # Halved so D learns more slowly than G (paper, section 3.3).
        loss_d = 0.5 * (loss_d_fake + loss_d_real)
        self.backward(loss_d)
        self.optimizer_step(opt_d)

        self.net_d.requires_grad_(False)
        opt_g.zero_grad(set_to_none=True)
        loss_g_gan = _gan_loss(judge(torch.cat([real_a, fake_b], 1)), True)
        weight = 1.0 + (cfg.l1_lesion_weight - 1.0) * batch["region"]
        loss_g_l1 = (weight * (fake_b - real_b).abs()).mean() * cfg.lambda_l1
        loss_g = loss_g_gan + loss_g_l1
        self.backward(loss_g)
        self.optimizer_step(opt_g)
        self.net_d.requires_grad_(True)

        losses = {
            "G": loss_g,
            "G_GAN": loss_g_gan,
            "G_L1": loss_g_l1,
            "D": loss_d,
            "D_real": loss_d_real,
            "D_fake": loss_d_fake,
        }
        return {k: v.detach() for k, v in losses.items()}

    # ---- inference -------------------------------------------------------------------
    @contextmanager
    def _inference(self) -> Iterator[None]:
        # Eval mode: batch-norm running statistics and no dropout, so a slice's output
        # depends on nothing but its input (and sampling changes no state).
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)

    def _generate(self, inputs: list[np.ndarray], batch_size: int) -> list[np.ndarray]:
        """Generator outputs in HU, float32 (H, W) each, for (1 + n_classes, H, W) inputs."""
        out: list[np.ndarray] = []
        with self._inference():
            for start in range(0, len(inputs), batch_size):
                x = torch.from_numpy(np.stack(inputs[start : start + batch_size]))
                y = self.generator_net("net_g")(x.to(self.device))[:, 0].float().cpu().numpy()
                out.extend(self.window.to_hu(y).astype(np.float32))
        return out

    def _composite(self, host: np.ndarray, generated: np.ndarray, region: np.ndarray) -> np.ndarray:
        return np.where(region, generated, host).astype(np.float32)

    def synthesize(
        self, n: int, *, rng: np.random.Generator, hosts: Sequence[Sample], batch_size: int = 8
    ) -> list[Sample]:
        """``n`` slices with new lesions painted into hosts drawn (with replacement) by ``rng``.

        Each gets ``lesions_range`` masks from the bank, transformed and placed inside
        `augment.anatomy.allowed_region` of the host, clear of its lesions (and of each
        other) by ``erase_dilate_px + 1`` pixels. Ids are ``syn_00000``...; the patient
        is the host's; ``meta`` keeps the host's `HOST_META` and adds ``host_id``,
        ``host_index``, ``placements`` (per new lesion: bank index and source id, class,
        flip, angle, scale, (row, col) of its top-left pixel), ``window``,
        ``erase_fill_hu`` and ``erased_px``.

        Raises:
            ConfigError: ``n < 0`` or no hosts.
            CheckpointError: the mask bank is empty (never prepared, nor loaded).
            DataError: a host has the wrong size, or no lesion fits on any of
                ``max_tries`` drawn hosts.
        """
        if n < 0:
            raise ConfigError(f"pix2pix: cannot synthesize {n} samples")
        if not hosts:
            raise ConfigError("pix2pix: synthesis needs host slices to paint lesions into")
        if len(self.bank_classes.value) == 0:
            raise CheckpointError(
                "pix2pix: the mask bank is empty; train the model (prepare) or load a trained checkpoint"
            )
        for s in hosts:
            self._check(s, "host")
        bank = self.mask_bank
        allowed: dict[int, tuple] = {}  # per host index: (region, anchors), computed once per call
        out: list[Sample] = []
        for start in range(0, n, batch_size):  # chunks bound the memory for large n
            plans = [
                self._plan(hosts, bank, rng, allowed) for _ in range(min(batch_size, n - start))
            ]
            conds = [self.condition(hosts[hi].image, new) for hi, new, _ in plans]
            generated = self._generate([c[0] for c in conds], batch_size)
            for (hi, new, placements), (_, region, fill), gen in zip(
                plans, conds, generated, strict=True
            ):
                host = hosts[hi]
                # Only what still describes the new image (not the host's lesion list,
                # seed or generator); host_id leads back to the rest.
                meta = {k: host.meta[k] for k in HOST_META if k in host.meta}
                meta.update(
                    id=f"syn_{len(out):05d}",
                    patient_id=host.patient_id,
                    host_id=host.id,
                    host_index=hi,
                    synthetic=True,
                    generator=self.name,
                    placements=placements,
                    window=[self.window.center, self.window.width],
                    erase_fill_hu=fill,
                    erased_px=int(region.sum()),
                )
                if "source" in host.meta:  # the file read was the host's
                    meta["host_source"] = host.meta["source"]
                image = np.where(region, gen, host.image).astype(np.float32)
                label = np.where(new > 0, new, host.mask).astype(np.uint8)
                out.append(Sample(image=image, mask=label, meta=meta))
        return out

    def _regions(self, host: Sample) -> tuple[np.ndarray, dict[int, np.ndarray] | None]:
        """The host's allowed region and, with ``subtype_regions``, per class id the
        region its lesions' centres must fall in (None: anywhere allowed)."""
        cfg = self.cfg
        names = {int(k): v for k, v in (self.data_info.get("classes") or {}).items()}
        spacing = host.meta.get("spacing")
        if not cfg.subtype_regions or not names:
            return allowed_region(host.image, cfg.anatomy, spacing=spacing), None
        regions = lesion_regions(host.image, cfg.anatomy, spacing=spacing)
        region = regions.get("brain", regions.get("liver"))
        return region, {c: class_anchor(name, regions) for c, name in names.items()}

    def _plan(
        self,
        hosts: Sequence[Sample],
        bank: MaskBank,
        rng: np.random.Generator,
        allowed: dict[int, tuple],
    ) -> tuple[int, np.ndarray, list[dict]]:
        """Draw a host and place new lesions on it: ``(host index, new mask, placements)``."""
        cfg = self.cfg
        for _ in range(cfg.max_tries):
            hi = int(rng.integers(len(hosts)))
            if hi not in allowed:
                allowed[hi] = self._regions(hosts[hi])
            region, anchors = allowed[hi]
            new, placements = place_lesions(
                hosts[hi].mask > 0,
                region,
                bank,
                rng,
                n_range=cfg.lesions_range,
                scale_range=cfg.scale_range,
                rotation_range=cfg.rotation_range,
                gap=cfg.erase_dilate_px + 1,  # erase areas never reach a host lesion
                anchors=anchors,
            )
            if placements:
                return hi, new, placements
        raise DataError(
            f"pix2pix: no bank lesion fits the {cfg.anatomy} region of {cfg.max_tries} drawn "
            "hosts (hosts without that anatomy, or masks too large for the slices?)"
        )

    quality_scored = True  # --until quality (gan.train.early_stop)

    def quality_probe(
        self, data: Sequence[Sample], data_b: Sequence[Sample] | None, *, seed: int
    ) -> dict[str, float]:
        """SSIM/PSNR of a few training lesion slices repainted from their own masks, and
        lesion HU generated vs real (`gan.train.probes.own_mask_probe`; no random draw)."""
        from gan.train.probes import own_mask_probe

        return own_mask_probe(self, data)

    def reconstruct(self, samples: Sequence[Sample], *, batch_size: int = 8) -> list[Sample]:
        """Repaint each slice's own lesions from its own mask (held-out SSIM/PSNR).

        Returns:
            One `Sample` per input, in order, with the input's id, mask, boxes and
            labels; ``meta`` (the input's, less ``seed`` and ``source``) adds ``host_id``,
            ``synthetic``, ``generator``, ``reconstruction`` and ``erased_px``.
            Lesion-free slices come back unchanged (nothing is erased).
        """
        for s in samples:
            self._check(s, "reconstruction")
        out = []
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            conds = [self.condition(s.image, s.mask) for s in chunk]
            generated = self._generate([c[0] for c in conds], batch_size)
            for s, (_, region, _), gen in zip(chunk, conds, generated, strict=True):
                meta = {k: v for k, v in s.meta.items() if k not in ("seed", "source")}
                meta.update(
                    host_id=s.id,
                    synthetic=True,
                    generator=self.name,
                    reconstruction=True,
                    erased_px=int(region.sum()),
                )
                image = np.where(region, gen, s.image).astype(np.float32)
                out.append(Sample(image, s.mask.copy(), s.boxes.copy(), s.labels.copy(), meta=meta))
        return out
