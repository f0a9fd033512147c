"""Pure tensor functions: no randomness, no state. Every random op in keepmix is
``sample_params`` (in the module classes) followed by one of these functions.

The colour op ``color`` (PIL's ImageEnhance.Color) is not re-exported here, because the name
would hide the module :mod:`keepmix.functional.color`; use ``keepmix.functional.color.color``."""

from keepmix.functional.boxes import (
    box_areas,
    box_masks,
    centered_boxes,
    check_boxes,
    corner_boxes,
    fill_boxes,
    paste,
)
from keepmix.functional.color import (
    autocontrast,
    blend,
    brightness,
    contrast,
    equalize,
    grayscale,
    invert,
    posterize,
    sharpness,
    smooth,
    solarize,
)
from keepmix.functional.erasing import erase
from keepmix.functional.geometry import (
    affine,
    rotate,
    rotation_matrix,
    shear_matrix,
    shear_x,
    shear_y,
    translate_x,
    translate_y,
    translation_matrix,
)
from keepmix.functional.mixing import area_lambda, cutmix, mixup
from keepmix.functional.regions import (
    Candidates,
    box_sums,
    candidate_boxes,
    candidate_positions,
    candidate_scores,
    masked_quantile,
    pick_where,
    summed_area_table,
)
from keepmix.functional.resize_paste import resize_into_boxes
from keepmix.functional.roi_align import max_sampling_grid, roi_align
from keepmix.functional.selection import KeepSelection, num_draws, select_boxes

__all__ = [
    "box_areas",
    "box_masks",
    "centered_boxes",
    "check_boxes",
    "corner_boxes",
    "fill_boxes",
    "paste",
    "autocontrast",
    "blend",
    "brightness",
    "contrast",
    "equalize",
    "grayscale",
    "invert",
    "posterize",
    "sharpness",
    "smooth",
    "solarize",
    "erase",
    "affine",
    "rotate",
    "rotation_matrix",
    "shear_matrix",
    "translation_matrix",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "area_lambda",
    "cutmix",
    "mixup",
    "Candidates",
    "box_sums",
    "candidate_boxes",
    "candidate_positions",
    "candidate_scores",
    "masked_quantile",
    "pick_where",
    "summed_area_table",
    "resize_into_boxes",
    "KeepSelection",
    "num_draws",
    "select_boxes",
    "max_sampling_grid",
    "roi_align",
]
