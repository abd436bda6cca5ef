"""Diagnostic: can the default small-CNN encoder tell an SR model's whole outputs from GT without a reference?

Trains ``SmallCNN + mean pool + linear`` from scratch as a binary classifier (GT crop vs. the same crop
super-resolved by ``--sr-model``) on the training photos of an FGR dataset, and reports on the held-out photos

* ``paired_acc``: share of held-out crops whose SR output gets a higher "SR" logit than its own GT;
* ``unpaired_auc``: ROC AUC over all held-out GT vs. all held-out SR outputs (no shared content), which is
  what a reference-free reward has to do.

If ``unpaired_auc`` is high while the reward model's map stays dark on that SR model, the encoder can see the
difference and the reward model's objective is what misses it.

    python scripts/probe_sr_detect.py --data runs/fgr_v2 --sr-model realesrgan-x4plus --json out.json
"""

from __future__ import annotations

import argparse
import fnmatch
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from finpercep.data.manifest import read_manifest
from finpercep.io import load_image
from finpercep.rm.encoders import SmallCNN
from finpercep.rm.metrics import auroc


def load_pairs(data: Path, sr_model: str, held: list[str]) -> tuple[list, list]:
    rows = read_manifest(data)
    groups: dict[str, dict[str, dict]] = {}
    for r in rows:
        if r["role"] == "gt":
            groups.setdefault(r["group"], {})["gt"] = r
        elif r["role"] == "sr" and r["sr_model"] == sr_model:
            groups.setdefault(r["group"], {})["sr"] = r
    if not any("sr" in g for g in groups.values()):
        raise SystemExit(f"{data}: no whole SR outputs of {sr_model!r} in the manifest")
    train, test = [], []
    for g in groups.values():
        if "gt" not in g or "sr" not in g:
            continue
        pair = tuple(
            torch.from_numpy(load_image(data / g[k]["image"])).permute(2, 0, 1) for k in ("gt", "sr")
        )
        is_held = any(fnmatch.fnmatch(g["gt"]["source_image"], p) for p in held)
        (test if is_held else train).append(pair)
    return train, test


class Probe(nn.Module):
    def __init__(self, norm: str = "none") -> None:
        super().__init__()
        self.enc = SmallCNN((16, 32, 64, 128), (1, 1, 1, 1), norm)
        self.head = nn.Linear(128, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(x)[-1].mean(dim=(2, 3)))[:, 0]


@torch.no_grad()
def evaluate(net: Probe, pairs: list) -> dict[str, float]:
    net.eval()
    logits = np.array([net(torch.stack(p)).numpy() for p in pairs])  # [n, 2]: gt, sr
    net.train()
    labels = np.r_[np.zeros(len(logits)), np.ones(len(logits))]
    return {
        "paired_acc": float(np.mean(logits[:, 1] > logits[:, 0])),
        "unpaired_auc": auroc(np.r_[logits[:, 0], logits[:, 1]], labels.astype(bool)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="FGR dataset folder")
    p.add_argument("--sr-model", required=True, help="sr_model name in the manifest, e.g. realesrgan-x4plus")
    p.add_argument("--held-out", nargs="+", default=["coffee", "motorcycle_*"], help="held-out photos")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=96)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--norm", default="none", help="SmallCNN normalisation: none, group, batch")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    train, test = load_pairs(a.data, a.sr_model, a.held_out)
    if not train or not test:
        raise SystemExit(f"{a.data}: {len(train)} training and {len(test)} held-out pairs; need both")
    smallest = min(min(p[0].shape[1:]) for p in train)
    if a.crop > smallest:
        raise SystemExit(f"--crop {a.crop} exceeds the smallest training image side ({smallest})")
    net = Probe(a.norm)
    opt = torch.optim.AdamW(net.parameters(), a.lr)
    history = []
    for step in range(1, a.steps + 1):
        xs, ys = [], []
        for _ in range(a.batch):
            pair = train[rng.integers(len(train))]
            label = int(rng.integers(2))
            img = pair[label]
            i, j = (int(v) for v in rng.integers(0, np.array(img.shape[1:]) - a.crop + 1))
            img = img[:, i : i + a.crop, j : j + a.crop]
            xs.append(img.flip(2) if rng.random() < 0.5 else img)
            ys.append(float(label))
        loss = F.binary_cross_entropy_with_logits(net(torch.stack(xs)), torch.tensor(ys))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 300 == 0 or step == a.steps:
            row = {"step": step, "loss": loss.item(), "held_out": evaluate(net, test)}
            history.append(row)
            print(json.dumps(row), flush=True)
    result = {
        "sr_model": a.sr_model,
        "norm": a.norm,
        "train_pairs": len(train),
        "held_out_pairs": len(test),
        "train": evaluate(net, train),
        "held_out": history[-1]["held_out"],
        "history": history,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "history"}))
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
