"""Pictures: image grids with saliency maps and regions (``keepmix show``) and accuracy curves
(``keepmix plot``).

* :mod:`keepmix.viz.draw`: plain tensor functions (:func:`make_grid`, :func:`to_uint8_image`,
  :func:`saliency_to_rgb`, :func:`overlay`, :func:`draw_boxes`, :func:`upscale_nearest`,
  :func:`save_png`) that know nothing about augmentation methods;
* :mod:`keepmix.viz.ops`: :func:`save_method_grid`, :func:`run_method` and
  :class:`InnerTransform`, the only code that knows about ops (through their protocol);
* :mod:`keepmix.viz.curves`: :func:`plot_runs` over the runs' ``metrics.jsonl``.

matplotlib is needed only by :func:`plot_runs` and is imported there, so the rest (and keepmix
itself) works without it.
"""

from keepmix.viz.curves import METRICS_FILE, _curve, load_metrics, plot_runs  # noqa: F401 (_curve: for tests)
from keepmix.viz.draw import (
    REGION_COLORS,
    colormap,
    draw_boxes,
    make_grid,
    overlay,
    saliency_to_rgb,
    save_png,
    to_uint8_image,
    upscale_nearest,
)
from keepmix.viz.ops import _LEGEND_H, InnerTransform, MethodGrid, MethodOutput, run_method, save_method_grid  # noqa: F401

__all__ = [
    "make_grid",
    "to_uint8_image",
    "saliency_to_rgb",
    "overlay",
    "draw_boxes",
    "upscale_nearest",
    "save_png",
    "colormap",
    "run_method",
    "InnerTransform",
    "save_method_grid",
    "MethodOutput",
    "MethodGrid",
    "load_metrics",
    "plot_runs",
    "METRICS_FILE",
    "REGION_COLORS",
]
