"""FGR data synthesis: HR photos, LR degradation, SR candidates, masks, M_gt and the manifest."""

from .degradation import DegradationConfig, degrade
from .gtmap import GTMapConfig, gt_degradation_map, gt_degradation_maps
from .manifest import chains, merge, read_manifest
from .masks import MaskConfig, feather, random_mask, semantic_mask
from .photos import EMBEDDED_PHOTOS, Photo, embedded_photos, folder_photos
from .synthesis import SynthesisConfig, build

__all__ = [
    "EMBEDDED_PHOTOS",
    "DegradationConfig",
    "GTMapConfig",
    "MaskConfig",
    "Photo",
    "SynthesisConfig",
    "build",
    "chains",
    "degrade",
    "embedded_photos",
    "feather",
    "folder_photos",
    "gt_degradation_map",
    "gt_degradation_maps",
    "merge",
    "random_mask",
    "read_manifest",
    "semantic_mask",
]
