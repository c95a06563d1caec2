"""DCGAN for lesion regions of interest, learned jointly with their masks.

Radford et al. (2016) with two output channels, image and mask: the generator draws a
``roi_size`` x ``roi_size`` lesion ROI (image windowed to [-1, 1], mask in [-1, 1],
lesion where > 0), and `DCGAN.synthesize` pastes it, blended, into a real host slice
at an anatomically allowed place (`gan.models.paste`), so the pasted mask and box are the
label. With several lesion classes the GAN is class-conditional (a one-hot class
appended to ``z``, class maps as extra discriminator channels) and synthesis draws
classes with their training frequencies.

Training ROIs (`lesion_rois`): one per connected lesion component, centred on it and
shifted to stay inside the slice. A lesion must fit inside the ROI with a margin as
wide as the blend's reach; a larger one is, with ``large_lesions="scale"`` (default),
cropped with a proportionally larger square that is resized down to ``roi_size`` (so
the GAN learns it smaller than it was: choose a larger ``roi_size`` when many lesions
are large), or with ``"skip"`` left out. The counts are logged.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.transform import resize
from torch import Tensor

from augment.errors import CheckpointError, ConfigError, DataError
from augment.sample import Sample
from augment.window import WINDOWS, Window
from gan.base import GanModule
from gan.models.hu_match import class_targets, hu_match_loss
from gan.models.paste import clean_mask, feather_alpha, feather_reach, find_placement, paste
from gan.networks.dcgan import DCGANDiscriminator, DCGANGenerator, n_resolution_steps
from gan.train.diffaugment import diff_augment, parse_policy
from gan.train.ema import attach_ema, check_decay
from gan.train.optim import adam

log = logging.getLogger(__name__)

# Lesion classes each anatomy's data uses (head-ich: IPH, IVH, EDH, SDH, SAH; liver: tumour).
ANATOMY_CLASSES = {"head-ich": 5, "liver": 1}
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class DCGANConfig:
    """DCGAN options; defaults follow the paper (Adam 2e-4, beta1 0.5, z = 100, 64x64).

    Attributes:
        nz: latent size.
        ngf, ndf: generator / discriminator base widths (``* 16`` channels at 4x4).
        roi_size: ROI side, a power of two >= 8 (64 as in the paper; 32 drops one block).
        spectral_norm: spectral normalisation in D (and no BatchNorm there).
        window: ``(center, width)`` HU window mapping the image channel to [-1, 1].
        anatomy: kind for `augment.anatomy.allowed_region` ("head-ich" or "liver").
        lr, betas: Adam settings for both networks.
        n_classes: lesion classes; None takes the anatomy's (head-ich 5, liver 1).
            More than one makes the GAN class-conditional.
        large_lesions: "scale" or "skip" lesions that do not fit the ROI (module doc).
        dilate_px, feather_sigma: blend = lesion dilated by ``dilate_px``, feathered by a
            Gaussian of ``feather_sigma`` pixels.
        min_lesion_px: smaller lesion components are left out of training, and
            smaller generated lesions are redrawn.
        max_redraws: draws per synthetic sample before giving up.
        diffaugment: DiffAugment policy for what D sees, real and generated ROIs alike
            (`gan.train.diffaugment`: a comma-separated subset of ``color``,
            ``translation``, ``cutout``; ``""`` = off). Translation and cutout move image
            and mask channel together; ``color`` changes the image's HU only. Default off,
            as measured on the 64 px head phantom (60 slices, 53 lesions; ``cpu`` preset
            networks, ``ema = 0.999``, seed 0): with ``"translation"`` 81 % of draws gave a
            pasteable lesion after 1500 steps (16 % of generated masks under
            ``min_lesion_px``), with ``"translation,cutout"`` 88-100 % after 1200 (two
            seeds), without it 98 % after 1500 (README, "Generators on tens of lesions").
        ema: decay per step of the generator's moving average that synthesis uses
            (`gan.train.ema`; 0 = the raw generator, as the paper). Default 0.999 (about
            the last 1000 steps, with TensorFlow's warm-up early on): on that phantom,
            without it the mean HU of generated lesions swung between 47 and 81 HU over 5
            seeds at 400 steps, against real lesions' 50-63 HU interquartile range; with it
            (1500 steps, the ``cpu`` preset) every one of 5 seeds landed at 53-58 HU, with
            96-100 % of draws pasteable.
        lesion_hu_weight: weight of the lesion HU matching term in G's loss
            (`gan.models.hu_match`: per class, the mean HU over the generated lesion pixels
            against the real lesions', in model units). Default 5: on a fresh 64 px head
            phantom (50 slices, 58 lesions, ``cpu`` preset, 5 seeds) the pasted lesions'
            mean HU was 43-62 without it (two seeds below the real lesions' 46-70 HU
            interquartile range), 47-62 at weight 1 (one seed at the range's edge) and
            60-63 at 5 (real mean 58). 0 turns it off (the paper's loss).
    """

    nz: int = 100
    ngf: int = 64
    ndf: int = 64
    roi_size: int = 64
    spectral_norm: bool = False
    # (center, width); the data's anatomy sets its model window (gan.train.data.data_defaults).
    window: tuple[float, float] = WINDOWS["head-model"].as_pair()
    anatomy: str = "head-ich"
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    n_classes: int | None = None
    large_lesions: str = "scale"
    dilate_px: int = 2
    feather_sigma: float = 1.0
    min_lesion_px: int = 4
    max_redraws: int = 50
    diffaugment: str = ""
    ema: float = 0.999
    lesion_hu_weight: float = 5.0

    def __post_init__(self) -> None:
        parse_policy(self.diffaugment, owner="dcgan: diffaugment")
        check_decay(self.ema, "dcgan")
        if self.anatomy not in ANATOMY_CLASSES:
            raise ConfigError(
                f"dcgan: unknown anatomy {self.anatomy!r}; known: {', '.join(ANATOMY_CLASSES)}"
            )
        try:
            n_resolution_steps(self.roi_size)
        except ValueError:
            raise ConfigError(
                f"dcgan: roi_size must be a power of two >= 8, got {self.roi_size}"
            ) from None
        if self.large_lesions not in ("scale", "skip"):
            raise ConfigError(
                f"dcgan: large_lesions must be 'scale' or 'skip', got {self.large_lesions!r}"
            )
        for name in ("nz", "ngf", "ndf", "max_redraws", "min_lesion_px"):
            if getattr(self, name) < 1:
                raise ConfigError(f"dcgan: {name} must be >= 1, got {getattr(self, name)}")
        if not self.lesion_hu_weight >= 0:
            raise ConfigError(f"dcgan: lesion_hu_weight must be >= 0, got {self.lesion_hu_weight}")
        if self.dilate_px < 0 or self.feather_sigma < 0:
            raise ConfigError("dcgan: dilate_px and feather_sigma must be >= 0")
        if 2 * (feather_reach(self.dilate_px, self.feather_sigma) + 1) >= self.roi_size:
            raise ConfigError(
                f"dcgan: a {self.roi_size}px ROI leaves no room for a lesion with "
                f"dilate_px={self.dilate_px}, feather_sigma={self.feather_sigma}"
            )
        Window(*self.window)  # validates the width
        if not self.lr > 0:
            raise ConfigError(f"dcgan: lr must be > 0, got {self.lr}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"dcgan: betas must be in [0, 1), got {self.betas}")
        if self.n_classes is None:
            # Frozen: resolve once here so the saved config names the number it used.
            object.__setattr__(self, "n_classes", ANATOMY_CLASSES[self.anatomy])
        if not 1 <= self.n_classes <= 255:
            raise ConfigError(f"dcgan: n_classes must be in 1..255, got {self.n_classes}")

    @property
    def margin(self) -> int:
        """Pixels kept free around a training lesion: the blend's reach plus one."""
        return feather_reach(self.dilate_px, self.feather_sigma) + 1


def _crop(array: np.ndarray, top: int, left: int, side: int, fill: str) -> np.ndarray:
    """``array[top:top+side, left:left+side]``, padded (``np.pad`` mode ``fill``) where it leaves."""
    padded = np.pad(array, side, mode=fill)
    return padded[top + side : top + 2 * side, left + side : left + 2 * side]


def lesion_rois(
    samples: Sequence[Sample],
    *,
    size: int,
    window: Window,
    margin: int,
    large_lesions: str = "scale",
    min_px: int = 1,
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """One ``size`` x ``size`` ROI per connected lesion component, in model space.

    Args:
        samples: labelled slices in HU.
        size: ROI side.
        window: maps HU to [-1, 1] for the image channel.
        margin: pixels to keep between the lesion and the ROI's edge.
        large_lesions: "scale" (resize a larger crop down) or "skip".
        min_px: components with fewer pixels are left out (rasterisation specks).

    Returns:
        ``(rois, classes, counts)``: float32 (N, 2, size, size) with channel 0 the
        windowed image and channel 1 the component's mask (+1 lesion, -1 elsewhere);
        int64 (N,) class ids; ``{"lesions", "scaled", "skipped", "tiny"}``.
    """
    fit = size - 2 * margin
    rois: list[np.ndarray] = []
    classes: list[int] = []
    counts = {"lesions": 0, "scaled": 0, "skipped": 0, "tiny": 0}
    for s in samples:
        height, width = s.mask.shape
        for cls in np.unique(s.mask):
            if cls == 0:
                continue
            components, n = ndimage.label(s.mask == cls, structure=_EIGHT_CONNECTED)
            sizes = np.bincount(components.ravel(), minlength=n + 1)
            for k, (rows, cols) in enumerate(ndimage.find_objects(components), start=1):
                counts["lesions"] += 1
                if sizes[k] < min_px:
                    counts["tiny"] += 1
                    continue
                extent = max(rows.stop - rows.start, cols.stop - cols.start)
                side = size
                if extent > fit:
                    if large_lesions == "skip":
                        counts["skipped"] += 1
                        continue
                    side = math.ceil(extent * size / fit)
                    counts["scaled"] += 1
                top = round((rows.start + rows.stop - side) / 2)
                left = round((cols.start + cols.stop - side) / 2)
                # Shift the ROI inside the slice (the lesion stays inside: it fits in `side`).
                top = min(max(top, 0), height - side) if height >= side else (height - side) // 2
                left = min(max(left, 0), width - side) if width >= side else (width - side) // 2
                image = _crop(s.image, top, left, side, "edge")
                lesion = _crop(components == k, top, left, side, "constant")
                if side != size:
                    image = resize(
                        image, (size, size), order=1, anti_aliasing=True, preserve_range=True
                    )
                    lesion = resize(lesion.astype(np.float32), (size, size), order=1) >= 0.5
                mask_channel = np.where(lesion, 1.0, -1.0)
                rois.append(np.stack([window.to_model(image), mask_channel]).astype(np.float32))
                classes.append(int(cls))
    stacked = np.stack(rois) if rois else np.zeros((0, 2, size, size), np.float32)
    return stacked, np.asarray(classes, dtype=np.int64), counts


@contextlib.contextmanager
def _inference(module: torch.nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


class DCGAN(GanModule):
    """DCGAN on lesion ROIs (image + mask), pasted into host slices to make labelled data."""

    name = "dcgan"
    Config = DCGANConfig

    def __init__(self, cfg: DCGANConfig) -> None:
        super().__init__(cfg)
        self.conditional = cfg.n_classes > 1
        n_cond = cfg.n_classes if self.conditional else 0
        self.netG = DCGANGenerator(cfg.nz, cfg.ngf, 2, cfg.roi_size, n_cond)
        self.netD = DCGANDiscriminator(2, cfg.ndf, cfg.roi_size, n_cond, cfg.spectral_norm)
        self.optimizers = {
            "G": adam(self.netG.parameters(), cfg.lr, cfg.betas),
            "D": adam(self.netD.parameters(), cfg.lr, cfg.betas),
        }
        self.window = Window(*cfg.window)
        # Training-lesion count per class (index k-1 for class k); synthesis draws classes
        # with these frequencies, so they travel in the checkpoint.
        self.register_buffer("class_counts", torch.zeros(cfg.n_classes, dtype=torch.int64))
        self._rois: Tensor | None = None
        self._classes: Tensor | None = None
        self._class_hu: Tensor | None = None  # real lesion mean per class (prepare)
        self.policy = parse_policy(cfg.diffaugment)
        attach_ema(self, ("netG",), cfg.ema)

    # ---- training ------------------------------------------------------------
    @classmethod
    def check_data(
        cls,
        cfg: DCGANConfig,
        data: Sequence[Sample],
        data_b: Sequence[Sample] | None,
        *,
        folder: str = "data",
        folder_b: str = "data_b",
    ) -> None:
        """Refuse a ``roi_size`` larger than the slices: a training ROI would be mostly
        padding, and no generated ROI could be pasted into a slice of that size."""
        if not data:
            return
        h, w = min((s.image.shape for s in data), key=min)
        side = min(h, w)
        if cfg.roi_size <= side:
            return
        fits = 2 ** (side.bit_length() - 1)
        fix = f"use roi_size <= {fits}" if fits >= 8 else "use slices of at least 8 px"
        raise ConfigError(
            f"dcgan: roi_size = {cfg.roi_size} is larger than the {h}x{w} px slices of {folder} "
            f"(lesion ROIs are cut from them and pasted into them); {fix}"
        )

    def prepare(self, data: Sequence[Sample], data_b: Sequence[Sample] | None = None) -> None:
        """Crop one ROI per lesion component of ``data``; record class frequencies."""
        if data_b is not None:
            raise ConfigError(
                "dcgan: learns from one dataset; a second one (data_b) is for cyclegan"
            )
        cfg = self.cfg
        rois, classes, counts = lesion_rois(
            data,
            size=cfg.roi_size,
            window=self.window,
            margin=cfg.margin,
            large_lesions=cfg.large_lesions,
            min_px=cfg.min_lesion_px,
        )
        if counts["lesions"] == 0:
            raise DataError(
                f"dcgan: the {len(data)} training slices have no lesions; DCGAN learns lesion ROIs"
            )
        if len(rois) == 0:
            raise DataError(
                f"dcgan: none of the {counts['lesions']} lesions is usable: {counts['tiny']} "
                f"smaller than min_lesion_px={cfg.min_lesion_px}, {counts['skipped']} larger "
                f"than the {cfg.roi_size}px ROI (large_lesions='skip')"
            )
        if classes.max() > cfg.n_classes:
            raise DataError(
                f"dcgan: the data has lesion class {int(classes.max())} but n_classes is "
                f"{cfg.n_classes}; set n_classes in the dcgan config"
            )
        if counts["scaled"] or counts["skipped"]:
            log.warning(
                "dcgan: %d of %d lesions exceed the %dpx ROI and were %s",
                counts["scaled"] + counts["skipped"],
                counts["lesions"],
                cfg.roi_size,
                "scaled down" if cfg.large_lesions == "scale" else "skipped",
            )
        log.info(
            "dcgan: %d lesion ROIs from %d slices (%d components under %d px left out)",
            len(rois),
            len(data),
            counts["tiny"],
            cfg.min_lesion_px,
        )
        self._rois = torch.from_numpy(rois)
        self._classes = torch.from_numpy(classes)
        self._class_hu = class_targets(self._rois, self._classes, cfg.n_classes)
        freq = np.bincount(classes - 1, minlength=cfg.n_classes)
        self.class_counts.copy_(torch.from_numpy(freq))

    def make_batch(self, rng: np.random.Generator, batch_size: int) -> dict[str, Tensor]:
        """``real`` (B, 2, S, S) ROIs drawn with replacement, and their class ids ``cls`` (B,)."""
        if self._rois is None or self._classes is None:
            raise RuntimeError("dcgan: call prepare(data) before make_batch")
        idx = torch.from_numpy(rng.integers(0, len(self._rois), size=batch_size))
        return {"real": self._rois[idx], "cls": self._classes[idx]}

    def _condition(self, cls: Tensor) -> Tensor | None:
        if not self.conditional:
            return None
        return F.one_hot(cls.long() - 1, self.cfg.n_classes).float()

    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor | float]:
        """One DCGAN step: update D on real and generated ROIs, then G through a frozen D."""
        real = batch["real"]
        cond = self._condition(batch["cls"])
        opt_g, opt_d = self.optimizers["G"], self.optimizers["D"]
        z = self.shard.randn(real.shape[0], self.cfg.nz, device=real.device)
        fake = self.netG(z, cond)
        # DiffAugment: every ROI D sees, real or generated, freshly augmented (channel 0 is
        # the image, 1 the mask: geometric transforms move both).
        def aug(x: Tensor) -> Tensor:
            return diff_augment(x, self.policy, intensity_channels=(0,), shard=self.shard)

        # D: maximise log D(x) + log(1 - D(G(z))).
        self.netD.requires_grad_(True)
        opt_d.zero_grad(set_to_none=True)
        logit_real = self.netD(aug(real), cond)
        logit_fake = self.netD(aug(fake.detach()), cond)
        loss_d_real = F.binary_cross_entropy_with_logits(logit_real, torch.ones_like(logit_real))
        loss_d_fake = F.binary_cross_entropy_with_logits(logit_fake, torch.zeros_like(logit_fake))
        loss_d = loss_d_real + loss_d_fake
        self.backward(loss_d)
        self.optimizer_step(opt_d)

        # G: maximise log D(G(z)) (the paper's non-saturating loss), D frozen.
        self.netD.requires_grad_(False)
        opt_g.zero_grad(set_to_none=True)
        logit_gen = self.netD(aug(fake), cond)
        loss_g_gan = F.binary_cross_entropy_with_logits(logit_gen, torch.ones_like(logit_gen))
        loss_g, extra = loss_g_gan, {}
        if self._class_hu is not None:  # set by prepare; logged even at weight 0 (a drift gauge)
            loss_hu = hu_match_loss(fake, batch["cls"], self._class_hu)  # gan.models.hu_match
            extra["hu_match"] = loss_hu.detach()
            if self.cfg.lesion_hu_weight:
                loss_g = loss_g_gan + self.cfg.lesion_hu_weight * loss_hu
        self.backward(loss_g)
        self.optimizer_step(opt_g)
        self.netD.requires_grad_(True)

        return {
            "loss_d": loss_d.detach(),
            "loss_g": loss_g.detach(),
            "loss_g_gan": loss_g_gan.detach(),
            **extra,
            "d_real": torch.sigmoid(logit_real).mean().detach(),
            "d_fake": torch.sigmoid(logit_fake).mean().detach(),
        }

    # ---- synthesis -----------------------------------------------------------
    def generate_roi(self, latent_seed: int, cls: int) -> tuple[np.ndarray, np.ndarray]:
        """One generated ROI: ``(image in HU, raw mask channel in [-1, 1])``, float32 (S, S).

        ``z`` comes from a CPU torch generator seeded with ``latent_seed``, so a lesion
        can be regenerated from the seed recorded in its sample's meta.
        """
        z = torch.randn(1, self.cfg.nz, generator=torch.Generator().manual_seed(latent_seed))
        cond = self._condition(torch.tensor([cls]))
        device = self.class_counts.device
        with _inference(self):
            out = self.generator_net("netG")(z.to(device), None if cond is None else cond.to(device))
        out = out[0].float().cpu().numpy()
        return self.window.to_hu(out[0]).astype(np.float32), out[1].astype(np.float32)

    def class_probabilities(self) -> np.ndarray:
        counts = self.class_counts.cpu().numpy().astype(np.float64)
        if counts.sum() == 0:
            if not self.conditional:
                return np.ones(1)
            raise CheckpointError(
                "dcgan: no lesion class frequencies recorded: the model was never prepared on data"
            )
        return counts / counts.sum()

    def synthesize(
        self, n: int, *, rng: np.random.Generator, hosts: Sequence[Sample]
    ) -> list[Sample]:
        """``n`` host slices, each with one generated lesion pasted in (labels included).

        Per sample: draw a host, a class (training frequencies) and a latent seed from
        ``rng``; generate an ROI; clean its mask (largest component, holes filled); place
        it uniformly among the positions where the lesion lies inside
        `augment.anatomy.allowed_region` and its blend touches no existing lesion; blend.
        Failed draws (empty mask, blend reaching the ROI edge, no room) are redrawn up
        to ``max_redraws`` times. Blend weights are also zeroed outside the allowed
        region, so bone and air keep their HU (the model window cannot represent them).

        Raises:
            ConfigError: no hosts.
            DataError: no lesion could be placed within ``max_redraws`` draws.
        """
        if not hosts:
            raise ConfigError("dcgan: synthesis needs host slices to paste lesions into")
        cfg = self.cfg
        probs = self.class_probabilities()
        regions: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        out: list[Sample] = []
        with _inference(self):
            for i in range(n):
                for attempt in range(cfg.max_redraws):
                    drawn = self.draw_lesion(rng, hosts, probs, regions)
                    if drawn is not None:
                        sample, (h, cls, position, lesion, latent_seed) = drawn
                        sample.meta = self._meta(
                            i, hosts[h], cls, position, lesion, latent_seed, attempt
                        )
                        out.append(sample)
                        break
                else:
                    raise DataError(
                        f"dcgan: no lesion placed in {cfg.max_redraws} draws for sample {i}: "
                        f"generated masks empty or too large, or no room in the hosts' "
                        f"{cfg.anatomy} regions"
                    )
        return out

    def draw_lesion(
        self,
        rng: np.random.Generator,
        hosts: Sequence[Sample],
        probs: np.ndarray,
        regions: dict[int, tuple[np.ndarray, np.ndarray]],
    ) -> tuple[Sample, tuple[int, int, tuple[int, int], np.ndarray, int]] | None:
        """One draw of `synthesize`: a host, a class, a generated ROI, pasted; None when
        the draw fails (mask too small, blend at the ROI edge, no room in the host).

        Returns ``(sample, (host index, class, position, lesion mask, latent seed))``;
        ``regions`` caches each host's allowed region and lesions between draws.
        """
        from augment.anatomy import allowed_region

        cfg = self.cfg
        h = int(rng.integers(len(hosts)))
        cls = int(rng.choice(len(probs), p=probs)) + 1
        latent_seed = int(rng.integers(2**63 - 1))
        roi_hu, channel = self.generate_roi(latent_seed, cls)
        lesion = clean_mask(channel)
        if lesion.sum() < cfg.min_lesion_px:
            return None
        alpha = feather_alpha(lesion, cfg.dilate_px, cfg.feather_sigma)
        if _touches_edge(alpha):
            return None  # cutting the blend at the ROI edge would leave a seam
        if h not in regions:
            host = hosts[h]
            allowed = allowed_region(host.image, cfg.anatomy, spacing=host.meta.get("spacing"))
            regions[h] = (allowed, host.mask > 0)
        allowed, occupied = regions[h]
        position = find_placement(lesion, allowed, occupied, rng, clear=alpha > 0)
        if position is None:
            return None
        r, c = position
        s = cfg.roi_size
        alpha = alpha * allowed[r : r + s, c : c + s]
        sample = paste(hosts[h], roi_hu, lesion, cls, position, alpha)
        return sample, (h, cls, position, lesion, latent_seed)

    quality_scored = True  # --until quality (gan.train.early_stop)

    def quality_probe(
        self, data: Sequence[Sample], data_b: Sequence[Sample] | None, *, seed: int
    ) -> dict[str, float]:
        """``valid_rate`` (the share of `draw_lesion` draws that paste a lesion) and the HU
        inside generated vs real lesions (`gan.train.probes.pasted_lesion_probe`)."""
        from gan.train.probes import pasted_lesion_probe

        return pasted_lesion_probe(self, data, seed=seed)

    def preview_rows(self, hosts: Sequence[Sample], *, seed: int) -> list[tuple[str, list[Sample]]]:
        """Raw generated ROIs (image + thresholded mask channel), then pasted samples.

        Early in training the mask channel is often empty, so nothing can be pasted;
        the ROI row still shows how the generator is doing.
        """
        rng = np.random.default_rng(seed)
        probs = self.class_probabilities()
        rois = []
        for i in range(len(hosts)):
            cls = int(rng.choice(len(probs), p=probs)) + 1
            latent_seed = int(rng.integers(2**63 - 1))
            image, channel = self.generate_roi(latent_seed, cls)
            mask = ((channel > 0) * cls).astype(np.uint8)
            rois.append(Sample(image, mask, meta={"id": f"roi_{i:02d}", "patient_id": "roi"}))
        rows = [("generated ROI", rois)]
        try:
            rows.append((f"{self.name} pasted", self.sample(len(hosts), seed=seed, conditions=list(hosts))))
        except DataError as e:
            log.info("progress grid: pasting skipped (%s)", e)
        return rows

    def _meta(
        self,
        i: int,
        host: Sample,
        cls: int,
        position: tuple[int, int],
        lesion: np.ndarray,
        latent_seed: int,
        redraws: int,
    ) -> dict:
        rows, cols = np.nonzero(lesion)
        r, c = position
        meta = {
            "id": f"syn_{i:05d}",
            "patient_id": host.patient_id,
            "host_id": host.id,
            "synthetic": True,
            "generator": self.name,
            "lesion_class": cls,
            "position": [r, c],
            "pasted_box": [
                c + int(cols.min()),
                r + int(rows.min()),
                c + int(cols.max()) + 1,
                r + int(rows.max()) + 1,
            ],
            "latent_seed": latent_seed,
            "roi_size": self.cfg.roi_size,
            "window": list(self.cfg.window),
            "redraws": redraws,
        }
        if "spacing" in host.meta:
            meta["spacing"] = host.meta["spacing"]
        return meta


def _touches_edge(alpha: np.ndarray) -> bool:
    return bool(alpha[0].any() or alpha[-1].any() or alpha[:, 0].any() or alpha[:, -1].any())
