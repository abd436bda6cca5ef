"""``finpercep`` command line. Every subcommand only parses options and calls the public Python API."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from .allocator import add_allocator_argument, configure_allocator
from .config import add_arguments, from_args
from .errors import FinPercepError

TTA_CHOICES = ("none", "hflip", "flips")
"""``finpercep.rm.score.TTA_FLIPS``'s keys, here so that the CLI starts without importing torch."""

log = logging.getLogger("finpercep")


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")


# --- data ---------------------------------------------------------------------------------------


def _add_data_build(sub: argparse._SubParsersAction) -> None:
    from .data.degradation import DegradationConfig
    from .data.gtmap import GTMapConfig
    from .data.masks import MaskConfig
    from .data.synthesis import SynthesisConfig

    p = sub.add_parser(
        "build",
        help="synthesise an FGR dataset (region swaps + M_gt + ranking chains)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(p, SynthesisConfig, skip=("degradation", "mask", "gtmap"))
    add_arguments(p, DegradationConfig, prefix="deg_", skip=("scale",))
    add_arguments(p, MaskConfig, prefix="mask_")
    add_arguments(p, GTMapConfig, prefix="map_")
    p.set_defaults(func=_cmd_data_build)


def synthesis_config_from_args(ns: argparse.Namespace):  # noqa: ANN201
    from .data.degradation import DegradationConfig
    from .data.gtmap import GTMapConfig
    from .data.masks import MaskConfig
    from .data.synthesis import SynthesisConfig

    scale = getattr(ns, "scale", 4)
    return from_args(
        SynthesisConfig,
        ns,
        degradation=from_args(DegradationConfig, ns, prefix="deg_", scale=scale),
        mask=from_args(MaskConfig, ns, prefix="mask_"),
        gtmap=from_args(GTMapConfig, ns, prefix="map_"),
    )


def _cmd_data_build(ns: argparse.Namespace) -> None:
    from .data.synthesis import build, dataset_summary

    manifest = build(synthesis_config_from_args(ns), progress=not ns.quiet)
    s = dataset_summary(manifest)
    _out(f"{manifest}: {s['samples']} samples in {s['groups']} groups from {', '.join(s['sr_models'])}")


def _cmd_data_merge(ns: argparse.Namespace) -> None:
    from .data.manifest import merge

    n = merge(ns.shards, ns.out)
    _out(f"{ns.out}/manifest.jsonl: {n} samples merged from {len(ns.shards)} shards")


def _cmd_data_show(ns: argparse.Namespace) -> None:
    from .data.show import contact_sheet

    _out(str(contact_sheet(ns.dataset, ns.out, num=ns.num, seed=ns.seed)))


def _cmd_data_models(ns: argparse.Namespace) -> None:
    from .sr import SR_MODELS

    for spec in SR_MODELS:
        _out(
            f"{spec.name:28s} x{spec.scale}  {spec.kind:6s} {'weak ' if spec.weak else ''}{spec.description}"
        )


def _cmd_data_photos(ns: argparse.Namespace) -> None:
    from .data.photos import COLOUR_PHOTOS, EMBEDDED_PHOTOS

    for name, (h, w) in EMBEDDED_PHOTOS.items():
        _out(f"{name:22s} {w:5d}x{h:<5d} {'colour (default)' if name in COLOUR_PHOTOS else 'grayscale'}")


def _cmd_data_photos_fetch(ns: argparse.Namespace) -> None:
    from .data.corpus import CorpusConfig, corpus_summary, fetch

    index = fetch(from_args(CorpusConfig, ns), progress=not ns.quiet)
    for split, s in sorted(corpus_summary(index).items()):
        _out(f"{index.parent / split}: {s['photos']} photos, {s['copies']} copies")
    _out(f"{index}: every copy with its photo, package, licence and downscale factor")


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="FGR dataset synthesis and inspection")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    _add_data_build(dsub)
    m = dsub.add_parser("merge", help="join the manifests of several shards into one dataset folder")
    m.add_argument("shards", nargs="+", help="shard dataset folders")
    m.add_argument("--out", required=True, help="merged dataset folder")
    m.set_defaults(func=_cmd_data_merge)
    s = dsub.add_parser("show", help="contact sheet GT | SR | swap | mask | M_gt")
    s.add_argument("dataset", help="dataset folder")
    s.add_argument("--out", required=True, help="PNG file to write")
    s.add_argument("--num", type=int, default=6, help="number of samples (rows)")
    s.add_argument("--seed", type=int, default=0, help="which samples to pick")
    s.set_defaults(func=_cmd_data_show)
    ls = dsub.add_parser("models", help="list the SR sources")
    ls.set_defaults(func=_cmd_data_models)
    ph = dsub.add_parser(
        "photos", help="list the embedded photos (names for --photos); `photos fetch`: the photo corpus"
    )
    ph.set_defaults(func=_cmd_data_photos)
    phsub = ph.add_subparsers(dest="photos_cmd")
    phsub.add_parser("list", help="list the embedded photos").set_defaults(func=_cmd_data_photos)
    from .data.corpus import CorpusConfig

    fe = phsub.add_parser(
        "fetch",
        help="rebuild the photo corpus (real photographs from Debian packages) as train/val/test folders",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(fe, CorpusConfig)
    fe.set_defaults(func=_cmd_data_photos_fetch)


# --- rm / score -----------------------------------------------------------------------------------


def _add_rm(sub: argparse._SubParsersAction) -> None:
    from .rm.model import RMConfig
    from .rm.train_config import RMTrainConfig

    p = sub.add_parser("rm", help="FinPercep-RM reward model")
    rsub = p.add_subparsers(dest="rm_cmd", required=True)
    t = rsub.add_parser(
        "train",
        help="train RM_0, then grow and train RM_1 ... RM_N (resumes if --out exists)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(t, RMTrainConfig)
    add_arguments(t, RMConfig, prefix="model_", skip=("stage",))
    t.set_defaults(func=_cmd_rm_train)

    x = rsub.add_parser(
        "export",
        help="copy a finished run's RM_0 ... RM_N with float16 weights and provenance.json (e.g. the seed "
        "you picked by validation)",
    )
    x.add_argument("run", help="reward-model run folder (finpercep rm train --out)")
    x.add_argument("--out", required=True, help="export folder, e.g. src/finpercep/assets/rm_default")
    x.set_defaults(func=_cmd_rm_export)

    e = rsub.add_parser(
        "eval",
        help="held-out metrics of a saved reward model on an FGR dataset, against the HF-energy baseline",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    e.add_argument("--data", required=True, help="FGR dataset folder (finpercep data build)")
    e.add_argument("--checkpoint", default=None, help="reward model folder (default: the packaged one)")
    e.add_argument("--stage", type=int, default=None, help="stage RM_k (default: the highest)")
    e.add_argument("--sources", nargs="+", default=None, help="only these source photos (fnmatch patterns)")
    e.add_argument("--max-samples", type=int, default=0, help="cap on samples, whole groups (0: all)")
    e.add_argument("--out", default=None, help="also write the result to this JSON file")
    e.add_argument(
        "--per-sample",
        default=None,
        help="also write one JSON line per sample here (role, SR model, defect area, score, map means)",
    )
    e.add_argument(
        "--misranked",
        default=None,
        help="also draw the samples that cost SRCC the most (beside reference, map and M_gt) into this PNG",
    )
    e.add_argument(
        "--misranked-count", type=int, default=8, help="how many misranked samples to list and draw"
    )
    e.add_argument(
        "--tta",
        choices=list(TTA_CHOICES),
        default="none",
        help="test-time augmentation: average over flips (hflip: 2 passes, flips: 4)",
    )
    e.set_defaults(func=_cmd_rm_eval)

    s = sub.add_parser("score", help="score images with FinPercep-RM: JSONL, heatmap overlays, HTML page")
    s.add_argument("paths", nargs="+", help="images or folders")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--checkpoint", default=None, help="reward model folder (default: the packaged one)")
    s.add_argument("--stage", type=int, default=None, help="stage RM_k (default: the highest)")
    s.add_argument("--batch-size", type=int, default=8, help="images per batch")
    s.add_argument("--tile", type=int, default=512, help="tile size for large images")
    s.add_argument(
        "--tta",
        choices=list(TTA_CHOICES),
        default="none",
        help="test-time augmentation: average over flips (hflip: 2 passes, flips: 4)",
    )
    s.set_defaults(func=_cmd_score)


def _cmd_rm_train(ns: argparse.Namespace) -> None:
    from .rm.model import RMConfig
    from .rm.prepare import model_config_or_none
    from .rm.train import RMTrainConfig, train

    cfg = from_args(RMTrainConfig, ns)
    _out(str(train(cfg, model_config_or_none(cfg, from_args(RMConfig, ns, prefix="model_")))))


def _cmd_rm_export(ns: argparse.Namespace) -> None:
    from .rm.export import export_stages

    _out(str(export_stages(ns.run, ns.out)))


def _cmd_rm_eval(ns: argparse.Namespace) -> None:
    import json

    from .io import atomic_write_json
    from .rm.evaluate import evaluate_checkpoint

    res = evaluate_checkpoint(
        ns.data,
        ns.checkpoint,
        ns.stage,
        sources=ns.sources,
        max_samples=ns.max_samples,
        per_sample=ns.per_sample,
        misranked=ns.misranked,
        misranked_count=ns.misranked_count,
        tta=ns.tta,
    )
    if ns.out:
        atomic_write_json(ns.out, res)
    _out(json.dumps(res, indent=2))


def _cmd_score(ns: argparse.Namespace) -> None:
    from .rm.score import score_paths

    _out(
        str(
            score_paths(
                ns.paths,
                ns.out,
                ns.checkpoint,
                ns.stage,
                batch_size=ns.batch_size,
                tile=ns.tile,
                progress=not ns.quiet,
                tta=ns.tta,
            )
        )
    )


def _add_eval(sub: argparse._SubParsersAction) -> None:
    from .eval.cli import add_eval

    add_eval(sub)


def _add_experiment(sub: argparse._SubParsersAction) -> None:
    from .experiment.cli import add_experiment

    add_experiment(sub)


# --- rl -----------------------------------------------------------------------------------------


def _add_rl(sub: argparse._SubParsersAction) -> None:
    from .rl.cli import add_rl

    add_rl(sub)


# --- demo ---------------------------------------------------------------------------------------


def _add_demo(sub: argparse._SubParsersAction) -> None:
    from .demo import DemoConfig

    p = sub.add_parser(
        "demo",
        help="the main job end to end on scikit-image's photos",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(p, DemoConfig)
    p.add_argument(
        "--quick", dest="preset", action="store_const", const="quick", help="same as --preset quick"
    )
    p.set_defaults(func=_cmd_demo, preset=DemoConfig().preset)  # else --quick's default None wins


def _cmd_demo(ns: argparse.Namespace) -> None:
    from .demo import DemoConfig, run_demo

    _out(str(run_demo(from_args(DemoConfig, ns), progress=not ns.quiet)))


# --- main ---------------------------------------------------------------------------------------

ADDERS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_data,
    _add_rm,
    _add_rl,
    _add_eval,
    _add_experiment,
    _add_demo,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finpercep", description=__doc__)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    add_allocator_argument(parser)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for add in ADDERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if ns.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    configure_allocator(ns.allocator)
    try:
        ns.func(ns)
    except FinPercepError as exc:
        sys.stderr.write(f"finpercep: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("finpercep: interrupted; finished work is kept, re-run the same command to resume\n")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
