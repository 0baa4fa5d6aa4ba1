"""Synthetic CLIP-like and DINO-like teachers with documented, fixed behaviour.

Real CLIP/DINO weights cannot be obtained on every machine, and random weights make every
segmentation number meaningless. These two teachers are small hand-built models whose
behaviour is known, so that the synthetic benchmark measures the method, not luck. Both
plug in through the import-path mechanism exactly like a user's model:

    --pipeline.datamanager.clip.source ovs3d_nerfstudio.synthetic.teachers:synthetic_clip
    --pipeline.datamanager.dino.source ovs3d_nerfstudio.synthetic.teachers:synthetic_dino

**CLIP-like** (:class:`SyntheticClipTeacher`). Embeddings live in a space spanned by named
*appearance concepts*: 11 colour names and 3 textures (smooth, speckled, striped).

* Image side: every pixel of the crop gets soft evidence for each concept from local
  appearance only (its chromaticity and brightness against fixed colour prototypes; the
  high-pass energy of its 3x3 neighbourhood and the orientation coherence of its 5x5 one,
  both computed from the crop's own pixels). The crop's embedding is the *area average* of that evidence, mapped
  through a fixed random orthogonal projection, plus a shared "image" direction and a noise
  vector picked from a fixed table by a hash of the crop's 8-bit pixels. Averaging over the
  area is CLIP's documented failure that motivates RDA: a large region dominates the
  embedding of any crop it fills most of, and a small object inside it is lost.
* Text side: a label string never sees pixels. Each known word adds fixed concept weights
  (colour words weigh most; nouns and materials add their typical colours and textures: a
  "lawn" is green and speckled); the sum is normalised, projected with the same matrix, and
  a hashed per-word direction (outside the image subspace) plus a shared "text" direction are
  added. Labels that share a colour word ("red apple", "red tomato") are confusable.

**DINO-like** (:class:`SyntheticDinoTeacher`). One token per 8x8 cell: the cell's mean
chromaticity, brightness, brightness spread, texture energy and orientation, concatenated
with the same statistics averaged over the 3x3 cells around it, mapped by fixed random
Fourier features (cosine similarity of tokens ~ a Gaussian kernel on the statistics), plus
noise seeded by a hash of the image bytes. Cells on one surface agree; cells on surfaces of
different colour or texture do not.

All parameters are fixed by the dataclasses below and are part of each teacher's
``identity`` (the feature-cache key), with a version string to bump on any change of code.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Sequence, Tuple, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

COLOUR_CONCEPTS: Tuple[str, ...] = (
    "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "white", "grey", "black",
)
TEXTURE_CONCEPTS: Tuple[str, ...] = ("smooth", "speckled", "striped")
CONCEPTS: Tuple[str, ...] = COLOUR_CONCEPTS + TEXTURE_CONCEPTS

COLOUR_PROTOTYPES: Dict[str, Tuple[float, float, float]] = {
    "red": (0.8, 0.1, 0.1),
    "orange": (0.92, 0.5, 0.1),
    "yellow": (0.9, 0.82, 0.15),
    "green": (0.2, 0.6, 0.2),
    "blue": (0.15, 0.3, 0.85),
    "purple": (0.5, 0.2, 0.7),
    "pink": (0.95, 0.55, 0.7),
    "brown": (0.5, 0.32, 0.18),
    "white": (0.92, 0.92, 0.92),
    "grey": (0.5, 0.5, 0.5),
    "black": (0.08, 0.08, 0.08),
}
"""Albedo of each colour name; the teacher compares pixels with these times ``exposure``."""

LEXICON: Dict[str, Dict[str, float]] = {
    # Colour words name their concept outright.
    **{colour: {colour: 1.0} for colour in COLOUR_CONCEPTS},
    "gray": {"grey": 1.0},
    "golden": {"yellow": 0.8, "orange": 0.3},
    "silver": {"grey": 0.8, "white": 0.3, "smooth": 0.4},
    # Materials and surfaces: typical colour and texture.
    "wood": {"brown": 0.6, "striped": 0.8},
    "wooden": {"brown": 0.6, "striped": 0.8},
    "stone": {"grey": 0.5, "speckled": 0.8},
    "brick": {"red": 0.4, "brown": 0.4, "speckled": 0.5, "striped": 0.5},
    "lawn": {"green": 0.8, "speckled": 0.8},
    "grass": {"green": 0.8, "speckled": 0.8},
    "ceramic": {"white": 0.3, "smooth": 0.6},
    "plastic": {"smooth": 0.5},
    "metal": {"grey": 0.4, "smooth": 0.5},
    "glass": {"smooth": 0.6},
    "paper": {"white": 0.6, "smooth": 0.3},
    "fabric": {"speckled": 0.5},
    "leather": {"brown": 0.4, "black": 0.2, "smooth": 0.4},
    # Background nouns.
    "wall": {"white": 0.3, "grey": 0.2, "smooth": 0.3},
    "desktop": {"brown": 0.6, "striped": 0.6},
    "desk": {"brown": 0.6, "striped": 0.6},
    "table": {"brown": 0.5, "striped": 0.4},
    "shelf": {"brown": 0.5, "striped": 0.4},
    "floor": {"brown": 0.3, "grey": 0.3},
    "carpet": {"grey": 0.3, "speckled": 0.6},
    "sofa": {"grey": 0.3, "speckled": 0.3},
    "bed": {"white": 0.4, "smooth": 0.3},
    "fence": {"white": 0.3, "brown": 0.3, "striped": 0.6},
    # Object nouns: what the object usually looks like.
    "apple": {"red": 0.6, "green": 0.2, "speckled": 0.4},
    "tomato": {"red": 0.7, "smooth": 0.5},
    "lemon": {"yellow": 0.8, "smooth": 0.3},
    "banana": {"yellow": 0.8, "smooth": 0.3},
    "tennis": {"yellow": 0.5, "green": 0.3},
    "bottle": {"smooth": 0.4},
    "water": {"blue": 0.3},
    "mug": {"white": 0.3, "smooth": 0.4},
    "cup": {"white": 0.3, "smooth": 0.4},
    "notebook": {"white": 0.5, "striped": 0.4},
    "book": {"white": 0.3},
    "stapler": {"black": 0.4, "grey": 0.3, "smooth": 0.3},
    "mouse": {"black": 0.3, "grey": 0.3, "smooth": 0.3},
    "keyboard": {"black": 0.3, "grey": 0.3, "striped": 0.3},
    "sticky": {"yellow": 0.3, "smooth": 0.3},
    "notes": {"yellow": 0.3, "smooth": 0.3},
    "chips": {"yellow": 0.5, "speckled": 0.4},
    "potato": {"brown": 0.3, "yellow": 0.3, "speckled": 0.3},
    "tea": {"green": 0.3, "brown": 0.2},
    "can": {"grey": 0.3, "smooth": 0.3},
    "gift": {"speckled": 0.2},
    "box": {"brown": 0.3},
    "headphone": {"black": 0.5, "smooth": 0.3},
    "headphones": {"black": 0.5, "smooth": 0.3},
    "cap": {"speckled": 0.2},
    "soap": {"white": 0.3, "smooth": 0.4},
    "plant": {"green": 0.7, "speckled": 0.4},
    "cushion": {"speckled": 0.3},
    "teddy": {"brown": 0.6, "speckled": 0.4},
    "bear": {"brown": 0.5, "speckled": 0.3},
    "toy": {"smooth": 0.3},
    "car": {"grey": 0.2, "smooth": 0.3},
    "leaf": {"green": 0.8},
}
"""The teacher's world knowledge: concept weights of each known word (lower-case)."""

STOP_WORDS = frozenset({"a", "an", "the", "of", "and", "with", "on", "in", "photo", "picture"})
"""Words that carry no appearance and no identity."""

_VERSION = "2"
"""Bump on any change of the code below that changes embeddings: it is part of ``identity``."""


@dataclass(frozen=True)
class AppearanceParams:
    """How pixels are turned into appearance evidence; shared by both teachers."""

    exposure: float = 0.75
    """Typical brightness of a lit surface relative to its albedo; scales the colour prototypes."""
    chroma_sigma: float = 0.06
    """Width of the colour-name kernels in chromaticity (r, g) units."""
    value_sigma: float = 0.2
    """Width of the colour-name kernels in brightness (max of RGB) units; wide, so shading matters less."""
    dark_offset: float = 0.03
    """Added to each channel before taking chromaticity, so that near-black pixels read as neutral."""
    texture_threshold: float = 3e-3
    """Contrast-normalised 3x3 high-pass energy at which a pixel counts as half smooth, half textured."""
    texture_softness: float = 0.7
    """Width, in natural-log units of energy, of the smooth-to-textured transition."""


@dataclass(frozen=True)
class SyntheticClipParams:
    """Every number that shapes the CLIP-like embeddings (all part of ``identity``)."""

    embed_dim: int = 64
    seed: int = 0
    """Seeds the orthogonal projection, the modality directions and the word directions."""
    texture_weight: float = 0.6
    """Weight of the texture evidence relative to the colour evidence (CLIP leans on colour)."""
    image_offset: float = 2.5
    """Norm of the direction shared by all image embeddings (CLIP's modality gap)."""
    text_offset: float = 1.5
    """Norm of the direction shared by all text embeddings."""
    shared_offset: float = 1.0
    """Norm of a direction in both image and text embeddings: in CLIP even unrelated image-text
    pairs have a positive cosine. With the two offsets above it puts the cosines in CLIP's
    documented range (calibration in docs/synthetic-benchmark.md): matched ~0.28, classes
    apart by hundredths."""
    word_weight: float = 0.4
    """Norm of the per-label word-identity part, invisible to images."""
    noise: float = 0.4
    """Norm of the per-crop noise vector, chosen by a hash of the crop's pixels."""
    appearance: AppearanceParams = AppearanceParams()


@dataclass(frozen=True)
class SyntheticDinoParams:
    """Every number that shapes the DINO-like tokens (all part of ``identity``)."""

    feature_dim: int = 64
    seed: int = 0
    """Seeds the random Fourier features."""
    bandwidth: float = 3.0
    """Kernel width on the standardised cell statistics: token cosine ~ exp(-d^2 / (2 bandwidth^2))."""
    context_weight: float = 0.5
    """Scale of the 3x3-neighbourhood statistics relative to the cell's own."""
    noise: float = 0.15
    """Standard deviation of the token noise, relative to the token norm, seeded by the image bytes."""
    stat_scales: Tuple[float, ...] = (0.04, 0.04, 0.3, 0.1, 1.0, 0.5, 0.5)
    """Typical spread of each cell statistic (chromaticity r, g; brightness; brightness spread;
    log texture energy; orientation x2): one unit of each counts the same in the kernel."""
    appearance: AppearanceParams = AppearanceParams()


def _identity(name: str, params: object) -> str:
    """``name:v<version>:knowledge=<digest>:<every parameter>``, the feature-cache key.

    The digest covers the lexicon, stop words and colour prototypes, so editing the teacher's
    knowledge invalidates cached features even if the version is not bumped.
    """
    lexicon = sorted((word, sorted(weights.items())) for word, weights in LEXICON.items())
    knowledge = repr((lexicon, sorted(STOP_WORDS), COLOUR_PROTOTYPES))
    digest = hashlib.blake2b(knowledge.encode(), digest_size=6).hexdigest()
    fields = ",".join(f"{key}={value}" for key, value in sorted(_flatten(asdict(params)).items()))
    return f"{name}:v{_VERSION}:knowledge={digest}:{fields}"


def _flatten(tree: Dict[str, object], prefix: str = "") -> Dict[str, object]:
    flat: Dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _image_seed(image: Float[Tensor, "3 H W"], salt: int) -> int:
    """A 63-bit seed from an image's exact 8-bit pixels and shape: identical images, identical noise."""
    quantised = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().contiguous()
    digest = hashlib.blake2b(quantised.numpy().tobytes(), digest_size=8, person=b"ovs3d-syn")
    digest.update(np.asarray([*image.shape, salt], dtype=np.int64).tobytes())
    return int.from_bytes(digest.digest(), "little") >> 1


def _word_seed(word: str, salt: int) -> int:
    """A stable seed per word (Python's ``hash`` differs between processes)."""
    return int.from_bytes(hashlib.blake2b(f"{salt}:{word}".encode(), digest_size=8).digest(), "little") >> 1


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


_HASH_PRIME = 2_147_483_647
"""2^31 - 1: products of two residues fit in int64, so the batched crop hash never overflows."""


def _crop_hashes(quantised: Int[Tensor, "B 3 H W"], sizes: Int[Tensor, "B 2"]) -> Int[Tensor, "B"]:
    """A hash of each crop's 8-bit pixels and size, batched.

    Each pixel value is weighted by a pseudo-random function of its (channel, row, column)
    *within the crop*, so the hash of a crop does not depend on where it was cut from nor on
    the padding of the batch (padding pixels are 0 and add nothing).
    """
    _, channels, height, width = quantised.shape
    c = torch.arange(channels).view(channels, 1, 1)
    y = torch.arange(height).view(1, height, 1)
    x = torch.arange(width).view(1, 1, width)
    position = (c * 1_000_003 + y * 7_919 + x * 104_729 + 12_345) % _HASH_PRIME
    weights = (position * position + 40_503) % _HASH_PRIME
    # Per-term products stay below 2^39: the sum is exact for crops of up to ~4 M pixels.
    summed = (quantised * weights).sum(dim=(1, 2, 3)) % _HASH_PRIME
    return (summed * 31 + sizes[:, 0] * 1_009 + sizes[:, 1]) % _HASH_PRIME


_Function = TypeVar("_Function", bound=Callable)


def _single_threaded(function: _Function) -> _Function:
    """Runs ``function`` without autograd and with one intra-op thread, restored afterwards.

    The teachers work on tensors of at most a few MB, where intra-op threads cannot pay for
    their fork/join; on a CPU shared with other jobs they made every operation 10-20x slower
    (measured on a loaded 2-core machine). No autograd: the teachers are frozen.
    """

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.no_grad():
                return function(*args, **kwargs)
        finally:
            torch.set_num_threads(previous)

    return wrapper  # type: ignore[return-value]


def _masked_mean(
    values: Float[Tensor, "B C H W"], weight: Float[Tensor, "B 1 H W"], size: int = 3
) -> Float[Tensor, "B C H W"]:
    """Weighted ``size`` x ``size`` mean; pixels of weight 0 (padding, outside the crop) do not count."""
    summed = F.avg_pool2d(values * weight, size, stride=1, padding=size // 2)
    return summed / F.avg_pool2d(weight, size, stride=1, padding=size // 2).clamp_min(1e-6)


def _shift(values: Tensor, dy: int, dx: int) -> Tensor:
    """``values`` moved so that output[y, x] = input[y + dy, x + dx], zero outside."""
    height, width = values.shape[-2:]
    padded = F.pad(values, (1, 1, 1, 1))
    return padded[..., 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]


_COLOUR_BITS = 5
"""Bits per channel of the colour-evidence lookup table (32^3 entries)."""


class PixelAppearance:
    """Per-pixel appearance descriptors and concept evidence, from the given pixels only.

    ``valid`` marks the pixels that belong to the image (a crop padded into a batch): the
    neighbourhoods and gradients ignore everything else, so a crop's descriptors do not
    depend on what surrounded it in the original image.
    """

    @_single_threaded
    def __init__(self, params: AppearanceParams) -> None:
        self.params = params
        rgb = torch.tensor([COLOUR_PROTOTYPES[name] for name in COLOUR_CONCEPTS]) * params.exposure
        self.prototype_chroma = self.chromaticity(rgb[:, :, None, None])[:, :, 0, 0]
        self.prototype_value = rgb.amax(dim=1)
        # Colour evidence depends on the pixel alone, so it is tabulated once on 5-bit bin
        # centres; a lookup replaces ~15 element-wise operations on 11 channels per pixel.
        levels = 2**_COLOUR_BITS
        centres = (torch.arange(levels) + 0.5) / levels
        grid = torch.stack(torch.meshgrid(centres, centres, centres, indexing="ij"), dim=0).reshape(1, 3, -1, 1)
        self.colour_table = self.colour_evidence(grid)[0, :, :, 0].T.contiguous()

    def chromaticity(self, rgb: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B 2 H W"]:
        """(r, g) chromaticity, invariant to shading; ``dark_offset`` pulls near-black pixels to neutral."""
        shifted = rgb + self.params.dark_offset
        return shifted[:, :2] / shifted.sum(dim=1, keepdim=True)

    def colour_evidence(self, rgb: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B 11 H W"]:
        """Soft assignment of each pixel to the colour names (sums to 1), from chromaticity and brightness."""
        params = self.params
        chroma, value = self.chromaticity(rgb), rgb.amax(dim=1, keepdim=True)
        prototype_r, prototype_g = (c[None, :, None, None] for c in self.prototype_chroma.unbind(1))
        logits = ((chroma[:, :1] - prototype_r) ** 2 + (chroma[:, 1:] - prototype_g) ** 2) / params.chroma_sigma**2
        logits = logits + (value - self.prototype_value[None, :, None, None]) ** 2 / params.value_sigma**2
        return torch.softmax(-0.5 * logits, dim=1)

    def tabulated_colour_evidence(self, quantised: Int[Tensor, "B 3 H W"]) -> Float[Tensor, "B H W 11"]:
        """:meth:`colour_evidence` of 8-bit pixels through the lookup table."""
        bins = quantised >> (8 - _COLOUR_BITS)
        index = (bins[:, 0] << (2 * _COLOUR_BITS)) | (bins[:, 1] << _COLOUR_BITS) | bins[:, 2]
        return self.colour_table[index]

    def texture_descriptors(
        self, images: Float[Tensor, "B 3 H W"], valid: Float[Tensor, "B 1 H W"]
    ) -> Dict[str, Float[Tensor, "B _ H W"]]:
        """Log texture energy, texturedness and orientation (2) per pixel.

        Texture energy is the 3x3 high-pass energy of luminance divided by the squared local
        mean, so that it measures pattern contrast and not shading: a smooth shading ramp has no
        high-pass energy. Orientation is the 5x5 structure tensor's doubled-angle direction
        scaled by its coherence (1 for stripes, 0 for isotropic speckle).
        """
        luminance = images.mean(dim=1, keepdim=True)
        local_mean = _masked_mean(luminance, valid)
        high_pass = (luminance - local_mean) * valid
        energy = _masked_mean(high_pass**2, valid) / (local_mean**2 + 1e-3)
        # Central differences where both neighbours are inside the image.
        gx = (_shift(luminance, 0, 1) - _shift(luminance, 0, -1)) / 2
        gy = (_shift(luminance, 1, 0) - _shift(luminance, -1, 0)) / 2
        gx = gx * _shift(valid, 0, 1) * _shift(valid, 0, -1)
        gy = gy * _shift(valid, 1, 0) * _shift(valid, -1, 0)
        # A 5x5 window: over 3x3 even isotropic speckle looks oriented.
        tensor = _masked_mean(torch.cat([gx * gx - gy * gy, 2 * gx * gy, gx * gx + gy * gy], dim=1), valid, 5)
        log_energy = torch.log(energy + 1e-6)
        threshold = float(np.log(self.params.texture_threshold))
        return {
            "log_energy": log_energy,
            "textured": torch.sigmoid((log_energy - threshold) / self.params.texture_softness),
            "orientation": tensor[:, :2] / (tensor[:, 2:] + 1e-6),
        }

    @staticmethod
    def texture_evidence(descriptors: Dict[str, Tensor]) -> Float[Tensor, "B 3 H W"]:
        """Soft (smooth, speckled, striped) evidence per pixel; sums to 1."""
        textured = descriptors["textured"]
        coherence = descriptors["orientation"].pow(2).sum(dim=1, keepdim=True).sqrt().clamp(max=1.0)
        return torch.cat([1 - textured, textured * (1 - coherence), textured * coherence], dim=1)


_NOISE_TABLE_SIZE = 8192
"""Crop noise vectors are drawn from a fixed table at a position given by the crop's hash."""


class SyntheticClipTeacher:
    """CLIP-like teacher: area-averaged appearance evidence in, concept-space embeddings out.

    See the module docstring for the model; :class:`SyntheticClipParams` holds every number.
    """

    def __init__(self, params: SyntheticClipParams = SyntheticClipParams()) -> None:
        if params.embed_dim < len(CONCEPTS) + 5:
            raise ValueError(f"embed_dim must be at least {len(CONCEPTS) + 5} to hold the concept space.")
        self.params = params
        self.embed_dim = params.embed_dim
        self.identity = _identity("synthetic-clip", params)
        self.appearance = PixelAppearance(params.appearance)
        generator = torch.Generator().manual_seed(params.seed)
        basis, _ = torch.linalg.qr(torch.randn(params.embed_dim, params.embed_dim, generator=generator))
        num_concepts = len(CONCEPTS)
        # Disjoint orthonormal directions: concepts, image offset, text offset, shared offset,
        # word identities.
        self.concept_basis = basis[:, :num_concepts]
        self.image_direction = basis[:, num_concepts]
        self.text_direction = basis[:, num_concepts + 1]
        self.shared_direction = basis[:, num_concepts + 2]
        self.word_basis = basis[:, num_concepts + 3 :]
        noise = torch.randn(_NOISE_TABLE_SIZE, params.embed_dim, generator=generator)
        self.noise_table = params.noise * noise / noise.norm(dim=1, keepdim=True)

    @_single_threaded
    def encode_crops(self, crops: Sequence[Float[Tensor, "3 h w"]]) -> Float[Tensor, "B D"]:
        """Embeds crops of any sizes, each from its own 8-bit pixels only (padding is masked out)."""
        if len(crops) == 0:
            return torch.zeros(0, self.embed_dim)
        device = crops[0].device
        height = max(crop.shape[1] for crop in crops)
        width = max(crop.shape[2] for crop in crops)
        # Like CLIP's preprocessing, the teacher sees 8-bit pixels.
        padding = [(0, width - crop.shape[2], 0, height - crop.shape[1]) for crop in crops]
        quantised = torch.stack([F.pad(crop.detach().float().cpu(), pad) for crop, pad in zip(crops, padding)])
        quantised = (quantised.clamp(0, 1) * 255).round().long()
        sizes = torch.tensor([crop.shape[1:] for crop in crops])
        valid = (
            (torch.arange(height)[None, :, None] < sizes[:, 0, None, None])
            & (torch.arange(width)[None, None, :] < sizes[:, 1, None, None])
        ).float()[:, None]
        colour = self.appearance.tabulated_colour_evidence(quantised)
        texture = self.appearance.texture_evidence(self.appearance.texture_descriptors(quantised / 255.0, valid))
        # Area average: every pixel votes with equal weight, so the largest region wins.
        area = valid.sum(dim=(1, 2, 3))[:, None]
        colour = (colour * valid[:, 0, :, :, None]).sum(dim=(1, 2)) / area
        texture = (texture * valid).sum(dim=(2, 3)) / area
        concepts = torch.cat([colour, self.params.texture_weight * texture], dim=1)
        noise = self.noise_table[_crop_hashes(quantised, sizes) % _NOISE_TABLE_SIZE]
        offset = self.params.image_offset * self.image_direction + self.params.shared_offset * self.shared_direction
        embeddings = concepts @ self.concept_basis.T + offset + noise
        return embeddings.to(device)

    def concept_weights(self, text: str) -> Float[Tensor, "K"]:
        """Unnormalised concept weights of a label: the sum over its known words."""
        weights = torch.zeros(len(CONCEPTS))
        for word in _words(text):
            for concept, weight in LEXICON.get(word, {}).items():
                weights[CONCEPTS.index(concept)] += weight
        return weights

    @_single_threaded
    def encode_text(self, texts: List[str]) -> Float[Tensor, "C D"]:
        """Embeds label strings from their words alone; unknown words add only identity."""
        rows = []
        for text in texts:
            weights = self.concept_weights(text)
            appearance = weights / weights.norm() if weights.any() else weights
            words = _words(text) or [text.strip().lower()]
            identity = sum(
                torch.randn(self.word_basis.shape[1], generator=_generator(_word_seed(word, self.params.seed)))
                for word in words
            )
            identity = self.word_basis @ (identity / identity.norm())
            rows.append(
                self.concept_basis @ appearance
                + self.params.word_weight * identity
                + self.params.text_offset * self.text_direction
                + self.params.shared_offset * self.shared_direction
            )
        if not rows:
            return torch.zeros(0, self.embed_dim)
        return torch.stack(rows)


def _words(text: str) -> List[str]:
    return [word for word in re.findall(r"[a-z]+", text.lower()) if word not in STOP_WORDS]


class SyntheticDinoTeacher:
    """DINO-like dense teacher: random Fourier features of 8x8-cell appearance statistics."""

    stride = 8

    def __init__(self, params: SyntheticDinoParams = SyntheticDinoParams()) -> None:
        self.params = params
        self.feature_dim = params.feature_dim
        self.identity = _identity("synthetic-dino", params)
        self.appearance = PixelAppearance(params.appearance)
        generator = torch.Generator().manual_seed(params.seed)
        num_stats = 2 * len(params.stat_scales)
        self.frequencies = torch.randn(num_stats, params.feature_dim, generator=generator) / params.bandwidth
        self.phases = 2 * np.pi * torch.rand(params.feature_dim, generator=generator)

    @_single_threaded
    def encode_dense(self, images: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B h w C"]:
        """Tokens on the stride-8 grid; sides must be multiples of 8."""
        batch, _, height, width = images.shape
        if height % self.stride or width % self.stride:
            raise ValueError(f"Image sides {height}x{width} must be multiples of the stride {self.stride}.")
        device = images.device
        images = images.detach().float().cpu()
        descriptors = self.appearance.texture_descriptors(images, torch.ones(batch, 1, height, width))
        value = images.amax(dim=1, keepdim=True)
        pixel_stats = torch.cat(
            [
                self.appearance.chromaticity(images),
                value,
                value**2,
                descriptors["log_energy"],
                # Shading ramps are coherent too; only a textured pixel's orientation is its own.
                descriptors["orientation"] * descriptors["textured"],
            ],
            dim=1,
        )
        cell = F.avg_pool2d(pixel_stats, self.stride)
        # Brightness spread inside the cell replaces the raw second moment.
        spread = (cell[:, 3:4] - cell[:, 2:3] ** 2).clamp_min(0).sqrt()
        cell = torch.cat([cell[:, :3], spread, cell[:, 4:]], dim=1)
        cell = cell / torch.tensor(self.params.stat_scales)[None, :, None, None]
        context = F.avg_pool2d(F.pad(cell, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        stats = torch.cat([cell, self.params.context_weight * context], dim=1).permute(0, 2, 3, 1)
        tokens = torch.cos(stats @ self.frequencies + self.phases) * np.sqrt(2.0 / self.feature_dim)
        seeds = [_image_seed(image, self.params.seed) for image in images]
        noise = torch.stack([torch.randn(tokens.shape[1:], generator=_generator(seed)) for seed in seeds])
        tokens = tokens + self.params.noise * noise / np.sqrt(self.feature_dim)
        return tokens.to(device)


def synthetic_clip() -> SyntheticClipTeacher:
    """Factory for ``--pipeline.datamanager.clip.source ovs3d_nerfstudio.synthetic.teachers:synthetic_clip``."""
    return SyntheticClipTeacher()


def synthetic_dino() -> SyntheticDinoTeacher:
    """Factory for ``--pipeline.datamanager.dino.source ovs3d_nerfstudio.synthetic.teachers:synthetic_dino``."""
    return SyntheticDinoTeacher()
