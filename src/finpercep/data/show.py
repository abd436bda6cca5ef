"""Contact sheet of an FGR dataset: GT | SR | swap | mask | M_gt for a few samples."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..errors import FinPercepError  # noqa: E402
from ..io import load_image, load_map16  # noqa: E402
from .manifest import read_manifest  # noqa: E402


def contact_sheet(dataset: str | Path, out: str | Path, *, num: int = 6, seed: int = 0) -> Path:
    """Draw ``num`` swapped samples (rows) as GT | full SR | swap | mask | M_gt and save a PNG."""
    dataset = Path(dataset)
    rows = [r for r in read_manifest(dataset) if r["role"] in ("small", "large")]
    if not rows:
        raise FinPercepError(f"{dataset}: no swapped samples to show")
    rng = np.random.default_rng(seed)
    picks = [rows[i] for i in sorted(rng.choice(len(rows), size=min(num, len(rows)), replace=False))]
    sr_of = {(r["group"], r["sr_model"]): r for r in read_manifest(dataset) if r["role"] == "sr"}
    cols = ("GT", "SR", "swap", "mask", "M_gt")
    fig, axes = plt.subplots(
        len(picks), len(cols), figsize=(2.2 * len(cols), 2.3 * len(picks)), squeeze=False
    )
    for i, r in enumerate(picks):
        sr = sr_of.get((r["group"], r["sr_model"]))
        panels = [
            load_image(dataset / r["gt"]),
            load_image(dataset / sr["image"]) if sr else np.zeros((8, 8, 3)),
            load_image(dataset / r["image"]),
            load_image(dataset / r["mask"])[..., 0] if r["mask"] else np.zeros((8, 8)),
            load_map16(dataset / r["map"]),
        ]
        for j, (ax, img) in enumerate(zip(axes[i], panels, strict=True)):
            if img.ndim == 2:
                ax.imshow(img, cmap="inferno" if j == 4 else "gray", vmin=0, vmax=1)
            else:
                ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=10)
        axes[i][0].set_ylabel(
            f"{r['sr_model']}\n{r['role']} {r['mask_kind']}\narea {r['defect_area']:.2f}", fontsize=7
        )
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(out)
    return out
