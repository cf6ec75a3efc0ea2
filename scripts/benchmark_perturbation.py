"""Perturbation response of a trained network: how much QPM (or feature dropout) changes what it predicts.

VQ-Seg's central claim is a perturbation whose strength follows one knob (eps) and stays bounded. This script
measures it on a trained checkpoint and real validation slices: for each setting (QPM kernel / shuffle mode at
eps 0.1 ... 0.9 and several kernel temperatures; feature dropout at p 0.1 ... 0.9 on every level) it runs the
network's perturbed branch (``forward_train(perturb=True)``, eval-mode BatchNorm) against its clean forward and
reports

* ``fg_changed``: the fraction of foreground pixels (clean prediction != background) whose predicted class
  changes, and ``changed`` the same over all pixels;
* ``kl``: the mean over pixels of KL(softmax(clean) || softmax(perturbed)).

The network is rebuilt from ``configs/train.yaml`` with the overrides the run was trained with (read from the
benchmark's ``run.json``), loaded from the run's ``models/model.pt``, and fed the validation volumes of the same
configuration, every slice resized to the network size (bilinear, as the inferer does).

Examples:
    python scripts/benchmark_perturbation.py run --run results/acdc_cpu_peer/labeled3/vq_unimatch_qpm_dropout \\
        --model outputs/benchmark/cpu_peer/labeled3/vq_unimatch_qpm_dropout/models/model.pt
    python scripts/benchmark_perturbation.py report     # table + plot into docs/results.md and docs/
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import fire
import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a plain checkout

from vqseg_bundle.benchmarks.environment import environment, machine_label  # noqa: E402
from vqseg_bundle.benchmarks.paths import DEFAULT_DATASET_DIR  # noqa: E402
from vqseg_bundle.benchmarks.publish import pyplot, save_figure, write_section  # noqa: E402
from vqseg_bundle.data.datasets import resize_slices  # noqa: E402
from vqseg_bundle.networks.perturbations import FeatureDropout  # noqa: E402
from vqseg_bundle.networks.qpm import QuantizedPerturbation  # noqa: E402

MARK_START = "<!-- perturbation-response:start -->"
MARK_END = "<!-- perturbation-response:end -->"
EPS = (0.1, 0.3, 0.5, 0.7, 0.9)
TEMPERATURES = (0.1, 1.0, 10.0)
DEFAULT_OUT = "results/perturbation_response"


def settings(has_vq: bool, own: str = "none", distance: str = "sqeuclidean") -> list[dict[str, Any]]:
    """The perturbations measured: the network's own (the one it was trained with, ``own`` its name, unless
    "none"), dropout at every p; with a quantized level QPM (kernel at each temperature with ``distance``,
    shuffle) at every eps."""
    out = [{"kind": "own", "name": own}] if own != "none" else []
    out += [{"kind": "dropout", "p": p} for p in EPS]
    extra = {} if distance == "sqeuclidean" else {"distance": distance}
    if has_vq:
        for t in TEMPERATURES:
            out += [{"kind": "qpm", "mode": "kernel", "eps": e, "temperature": t, **extra} for e in EPS]
        out += [{"kind": "qpm", "mode": "shuffle", "eps": e} for e in EPS]
    return out


def label(setting: dict[str, Any]) -> str:
    if setting["kind"] == "own":
        return f"own ({setting['name']}, as trained)"
    if setting["kind"] == "dropout":
        return f"dropout p {setting['p']}"
    if setting["mode"] == "shuffle":
        return f"QPM shuffle eps {setting['eps']}"
    distance = f" {setting['distance']}" if "distance" in setting else ""
    return f"QPM kernel{distance} T {setting['temperature']:g} eps {setting['eps']}"


def configure(network: torch.nn.Module, setting: dict[str, Any]) -> None:
    """Make ``setting`` the network's only perturbation (QPM on its quantized levels, or dropout on every level);
    ``own``: the perturbation it was built with (its first call keeps a copy to restore it later)."""
    if not hasattr(network, "_own_perturbation"):
        network._own_perturbation = (
            network.qpm,
            network.feature_perturbation,
            network.dropout_levels,
            network.perturb_levels,
        )
    if setting["kind"] == "own":
        network.qpm, network.feature_perturbation, network.dropout_levels, network.perturb_levels = (
            network._own_perturbation
        )
        return
    levels = len(network.level_channels)
    if setting["kind"] == "dropout":
        network.qpm = None
        network.feature_perturbation = FeatureDropout(setting["p"])
        network.dropout_levels = tuple(range(levels))
    else:
        network.qpm = QuantizedPerturbation(
            setting["mode"],
            setting["eps"],
            setting.get("temperature", 1.0),
            distance=setting.get("distance", "sqeuclidean"),
            strategy="sparse",
        )
        network.feature_perturbation = None
        network.dropout_levels = ()
        network.perturb_levels = tuple(network.vq_levels)


def build(run: Path, model: Path, dataset_dir: str, overrides: dict[str, Any] | None) -> tuple[Any, Any, int]:
    """The trained network (eval mode), the validation items of the run's configuration and the slice size.

    The network is the one recorded in the model's settings file when it has one, else ``network_def`` of
    train.yaml with the run's overrides (``run.json``) and ``overrides``."""
    from monai.bundle import ConfigParser
    from vqseg_bundle.inferers.checkpoint import load_network_weights
    from vqseg_bundle.inferers.settings import build_network, read_model_record

    record = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
    cfg = dict(record.get("overrides", {}))
    cfg.update(overrides or {})
    parser = ConfigParser()
    parser.read_config(str(REPO / "configs" / "train.yaml"))
    parser.update(
        {
            "bundle_root": str(REPO),
            "dataset_dir": dataset_dir,
            "device": "$torch.device('cpu')",
            "fm_name": "none",
            "align_weight": 0.0,
        }
    )
    parser.update({k: v for k, v in cfg.items() if k not in ("fm_name", "align_weight")})
    if "image_size" not in cfg and record.get("protocol", "").startswith("cpu"):
        parser["image_size"] = 64
    record = read_model_record(model)
    if record is not None and (record.get("settings") or {}).get("network_def"):
        # the model's own settings file (models/model.json): its recorded network and slice size
        network = build_network(record["settings"])
        size = int(record["settings"]["image_size"])
    else:
        network = parser.get_parsed_content("network_def")
        size = int(parser.get_parsed_content("image_size"))
    load_network_weights(network, model)
    # the perturbation it was trained with (a settings record holds none: it has no weights): the "own" setting
    trained = parser.get_parsed_content("network_def")
    network.perturbation = trained.perturbation
    network._own_perturbation = (
        trained.qpm,
        trained.feature_perturbation,
        tuple(trained.dropout_levels),
        tuple(trained.perturb_levels),
    )
    items = parser.get_parsed_content("validate#dataset")
    return network.eval(), items, size


@torch.no_grad()
def measure(network, slices: torch.Tensor, setting: dict[str, Any], seed: int, batch: int = 32) -> dict[str, float]:
    configure(network, setting)
    gen = torch.Generator().manual_seed(seed)
    fg = changed_fg = changed = pixels = 0
    kl_sum = 0.0
    for start in range(0, slices.shape[0], batch):
        x = slices[start : start + batch]
        clean = network(x).float()
        pert = network.forward_train(x, perturb=True, generator=gen).seg_logits.float()
        c_pred, p_pred = clean.argmax(1), pert.argmax(1)
        diff = c_pred != p_pred
        mask = c_pred > 0
        fg += int(mask.sum())
        changed_fg += int((diff & mask).sum())
        changed += int(diff.sum())
        pixels += diff.numel()
        logp_c, logp_p = F.log_softmax(clean, 1), F.log_softmax(pert, 1)
        kl_sum += float((logp_c.exp() * (logp_c - logp_p)).sum(1).sum())
    return {
        "fg_changed": changed_fg / max(fg, 1),
        "changed": changed / pixels,
        "kl": kl_sum / pixels,
        "foreground_pixels": fg,
    }


def _val_slices(items, size: int, max_slices: int | None) -> torch.Tensor:
    """Every slice of the validation volumes ``(1, H, W, D)`` resized to the network size as the inferer does
    (bilinear): ``(N, 1, size, size)``, or ``max_slices`` of them evenly spaced."""
    slices = [np.asarray(item["image"])[0, :, :, d] for item in items for d in range(np.shape(item["image"])[-1])]
    slices = resize_slices(slices, (size, size), "bilinear")
    if max_slices and slices.shape[0] > max_slices:
        idx = torch.linspace(0, slices.shape[0] - 1, max_slices).round().long()
        slices = slices[idx]
    return slices


class Cli:
    """``run`` measures one checkpoint; ``report`` rewrites the docs section from every measured checkpoint."""

    def run(
        self,
        run: str,
        model: str | None = None,
        dataset_dir: str = DEFAULT_DATASET_DIR,
        name: str | None = None,
        overrides: dict | None = None,
        out_dir: str = DEFAULT_OUT,
        max_slices: int | None = None,
        seed: int = 0,
        threads: int = 1,
        distance: str = "sqeuclidean",
    ) -> None:
        """Measure the response of the checkpoint of one benchmark run.

        Args:
            run: the run's results folder (holds ``run.json`` with its overrides).
            model: the trained weights (default: ``outputs/benchmark/<protocol>/labeled<N>/<name>/models/model.pt``).
            dataset_dir: ACDC folder.
            name: name of the result (default: the run folder's name).
            overrides: further config overrides (e.g. for a run made with ``--extra``).
            out_dir: where ``<name>.json`` is written.
            max_slices: evaluate on at most this many validation slices (evenly spaced); ``None``: all.
            seed: seed of the perturbation draws.
            threads: torch threads.
            distance: QPM kernel distance of the sweep (``sqeuclidean`` or ``cosine``).
        """
        torch.set_num_threads(int(threads))
        run_path = Path(run)
        name = name or run_path.name
        if model is None:
            record = json.loads((run_path / "run.json").read_text())
            model = str(
                REPO
                / "outputs"
                / "benchmark"
                / record["protocol"]
                / f"labeled{record['labeled']}"
                / run_path.name
                / "models"
                / "model.pt"
            )
        if not Path(model).exists():
            raise FileNotFoundError(f"benchmark_perturbation: model file {model} does not exist")
        network, items, size = build(run_path, Path(model), dataset_dir, overrides)
        slices = _val_slices(items, size, max_slices)
        print(
            f"{name}: {slices.shape[0]} validation slices at {size} px; quantized levels {network.vq_levels}",
            flush=True,
        )
        rows = []
        start = time.perf_counter()
        for setting in settings(bool(network.vq_levels), network.perturbation, distance):
            stats = measure(network, slices, setting, seed)
            rows.append({**setting, **stats})
            print(
                f"  {label(setting):32s} fg changed {100 * stats['fg_changed']:5.1f} %  "
                f"all {100 * stats['changed']:5.1f} %  KL {stats['kl']:.4f}",
                flush=True,
            )
        out = {
            "name": name,
            "run": str(run),
            "model": str(model),
            "slices": int(slices.shape[0]),
            "image_size": size,
            "vq_levels": list(network.vq_levels),
            "rows": rows,
            "seed": seed,
            "machine": machine_label(environment()),
            "date": time.strftime("%Y-%m-%d"),
            "seconds": round(time.perf_counter() - start, 1),
            "command": "python scripts/benchmark_perturbation.py run " + " ".join(sys.argv[2:]),
        }
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / f"{name}.json").write_text(json.dumps(out, indent=2))
        print(f"benchmark_perturbation: wrote {Path(out_dir) / (name + '.json')}")

    def report(
        self,
        out_dir: str = DEFAULT_OUT,
        docs_file: str = "docs/results.md",
        plot: str = "docs/perturbation_response.png",
    ) -> None:
        """Rewrite the "Perturbation response" section of ``docs_file`` and the plot from ``out_dir/*.json``."""
        results = [json.loads(p.read_text()) for p in sorted(Path(out_dir).glob("*.json"))]
        if not results:
            raise FileNotFoundError(f"benchmark_perturbation: no results in {out_dir}; run `run` first")
        lines = [
            "Fraction of foreground pixels (clean prediction) whose predicted class changes under the perturbation, "
            "and mean KL(clean || perturbed) of the softmax, on the ACDC validation slices (eval-mode BatchNorm; "
            "QPM on the checkpoint's quantized levels, dropout on every level). Produced by "
            "`scripts/benchmark_perturbation.py`; commands below each table.",
            "",
        ]
        for res in results:
            lines += [
                f"**{res['name']}** (levels {res['vq_levels']}, {res['slices']} slices at {res['image_size']} px, "
                f"{res['date']}, {res['machine']}): `{res['command']}`",
                "",
                "| perturbation | " + " | ".join(f"{e}" for e in EPS) + " |",
                "| --- |" + " --- |" * len(EPS),
            ]
            groups: dict[str, dict[float, dict]] = {}
            for row in res["rows"]:
                if row["kind"] == "own":
                    continue
                key = label(row).rsplit(" ", 2)[0]
                groups.setdefault(key, {})[row.get("eps", row.get("p"))] = row
            for key, by in groups.items():
                cells = [f"{100 * by[e]['fg_changed']:.1f} % / {by[e]['kl']:.4f}" if e in by else "n/a" for e in EPS]
                lines.append(f"| {key} (fg changed / KL) | " + " | ".join(cells) + " |")
            lines += [
                f"\nThe model's own perturbation, {label(row)}: fg changed {100 * row['fg_changed']:.1f} %, "
                f"KL {row['kl']:.4f}."
                for row in res["rows"]
                if row["kind"] == "own"
            ]
            lines.append("")
        _plot(results, Path(plot))
        lines += [f"![perturbation response]({Path(plot).name})", ""]
        body = "\n".join(lines) + "\n"
        write_section(Path(docs_file), body, MARK_START, MARK_END, "Perturbation response")
        print(f"benchmark_perturbation: rewrote the section in {docs_file} and {plot}")


def _plot(results: list[dict], path: Path) -> None:
    fig, axes = pyplot().subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, res in zip(axes[0], results, strict=True):
        groups: dict[str, list] = {}
        for row in (r for r in res["rows"] if r["kind"] != "own"):
            groups.setdefault(label(row).rsplit(" ", 2)[0], []).append(
                (row.get("eps", row.get("p")), row["fg_changed"])
            )
        for key, pts in groups.items():
            xs, ys = zip(*sorted(pts), strict=True)
            ax.plot(xs, [100 * y for y in ys], marker="o", label=key)
        ax.set_title(res["name"], fontsize=9)
        ax.set_xlabel("eps (QPM) / p (dropout)")
        ax.set_ylabel("foreground pixels changed (%)")
        ax.set_ylim(0, 100)
    save_figure(fig, axes[0], path, dpi=90)


if __name__ == "__main__":
    fire.Fire(Cli)
