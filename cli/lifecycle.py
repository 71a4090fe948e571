"""``train``, ``evaluate`` and ``dataset``: make a model from labelled images and judge it.

The work lives in ``lifecycle/training.py``, ``lifecycle/scoring.py`` and ``lifecycle/report.py``;
these commands own the options, the progress bars and what is printed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from faust.cli import argument, option

from cli.command import EXIT_USAGE, command
from imgflow.app import settings
from lifecycle.training import HeadOptions


class Bars:
    """Progress bars on stderr, one per step, all closed when the command ends."""

    def __init__(self) -> None:
        self.bars: list[Any] = []

    def __call__(self, what: str, total: int) -> Any:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="img", desc=what)
        self.bars.append(bar)

        def advance(n: int) -> None:
            bar.update(n)
            if bar.n >= total:
                bar.close()  # the step's own time, not the command's

        return advance

    def close(self) -> None:
        for bar in self.bars:
            bar.close()


@command(
    option("--data", required=True, help="Folder with one sub-folder of images per label."),
    option("--out", required=True, help="New folder for the model, its spec and training.json."),
    option("--base", default=None, help="Spec of the base model (default: IMGFLOW_MODEL's Keras sibling)."),
    option("--binary", default=None, help="Train a sigmoid model: this sub-folder is the positive class."),
    option("--name", default=None, help="Model name (default: the data folder's name)."),
    option("--version", "model_version", default=None, help="Model version (default: the UTC time)."),
    option("--epochs", type=int, default=40, help="Passes over the training features."),
    option("--learning-rate", type=float, default=HeadOptions.learning_rate, help="Adam's step size."),
    option("--val", type=float, default=0.2, help="Share of each label held out (0: none)."),
    option("--seed", type=int, default=0, help="Seeds the split, the head's weights and dropout."),
    option(
        "--target", default="best-f1", help="Binary threshold on the held-out split: best-f1 or recall:0.95."
    ),
    option("--cache", default=None, help="Feature cache folder (default: IMGFLOW_HOME/features)."),
    option(
        "--tflite", is_flag=True, default=False, help="Serve it as TFLite (faster; the Keras spec beside)."
    ),
)
async def train(
    self,
    data: str,
    out: str,
    base: str | None,
    binary: str | None,
    name: str | None,
    model_version: str | None,
    epochs: int,
    learning_rate: float,
    val: float,
    seed: int,
    target: str,
    cache: str | None,
    tflite: bool,
) -> None:
    """Train a new head on a base model's pooled features; writes an ordinary model spec."""
    from lifecycle.evaluation import parse_target
    from lifecycle.training import TrainingError
    from lifecycle.training import train as train_model
    from models.spec import ModelError, load_spec

    bars = Bars()
    try:
        chosen = parse_target(target)
        base_spec = load_spec(base or settings.model_spec_path)
        trained = train_model(
            Path(data),
            base_spec,
            Path(out),
            name=name,
            version=model_version,
            binary=binary,
            val=val,
            target=chosen,
            options=HeadOptions(epochs=epochs, learning_rate=learning_rate, seed=seed),
            cache_dir=Path(cache) if cache else settings.home / "features",
            progress=bars,
            tflite=tflite,
        )
    except (TrainingError, ModelError, ValueError) as exc:
        self.say(f"train: {exc}", file=self.stderr)
        raise SystemExit(EXIT_USAGE) from None
    finally:
        bars.close()
    record = trained.record
    for path, why in record["skipped"]:
        self.say(f"skipped {path}: {why}", file=self.stderr)
    counts = ", ".join(f"{label} {n}" for label, n in record["counts"].items())
    seconds = record["seconds"]
    self.say(
        f"trained {trained.spec.key} from {sum(record['counts'].values())} images ({counts}): "
        f"{len(record['split']['train'])} trained on, {len(record['split']['held_out'])} held out, "
        f"{len(record['skipped'])} skipped; "
        f"{seconds['total_s']:.1f} s (features {seconds['features_s']:.1f} s, "
        f"{record['features']['cached']} cached; head {seconds['head_s']:.1f} s)"
    )
    held = record["held_out_metrics"]
    if held:
        line = f"held out: accuracy {held['accuracy']:.3f}, macro F1 {held['macro_f1']:.3f}"
        if record["threshold"] is not None:
            line += (
                f", ROC AUC {held['binary']['roc_auc']:.3f}, threshold {record['threshold']:.2f} ({target})"
            )
        self.say(line)
    self.say(str(trained.spec.spec_path))


@command(
    option("--model", default=None, help="Spec of the model to judge (default: IMGFLOW_MODEL)."),
    option("--data", default=None, help="Folder with one sub-folder of images per label."),
    option("--all", "every_image", is_flag=True, default=False, help="Also the images the model trained on."),
    option("--target", default="best-f1", help="Binary threshold to choose: best-f1 or recall:0.95."),
    option(
        "--out", default=None, help="Folder for evaluation.json and report.html (default: beside the spec)."
    ),
    option("--feedback", is_flag=True, default=False, help="Accuracy per model version against corrections."),
    option("--no-store", is_flag=True, default=False, help="Do not store the evaluation in MongoDB."),
    option("--json", "as_json", is_flag=True, default=False, help="Print the result as JSON."),
    avoid={"MongoDB": "the evaluation was written to its report; --no-store skips storing it"},
)
async def evaluate(
    self,
    model: str | None,
    data: str | None,
    every_image: bool,
    target: str,
    out: str | None,
    feedback: bool,
    no_store: bool,
    as_json: bool,
) -> None:
    """Accuracy, per-class precision/recall/F1, confusion; ROC AUC and a threshold for binary models."""
    if feedback:
        _feedback(self, model, as_json)
        return
    if not data:
        self.say("evaluate: give --data FOLDER (or --feedback)", file=self.stderr)
        raise SystemExit(EXIT_USAGE)
    from lifecycle.evaluation import parse_target
    from lifecycle.report import render_html
    from lifecycle.scoring import evaluate_folder
    from lifecycle.training import TrainingError
    from models.spec import ModelError, load_spec

    bars = Bars()
    try:
        spec = load_spec(model or settings.model_spec_path)
        chosen = parse_target(target)
        result = evaluate_folder(spec, Path(data), target=chosen, every_image=every_image, progress=bars)
    except (TrainingError, ModelError, ValueError) as exc:
        self.say(f"evaluate: {exc}", file=self.stderr)
        raise SystemExit(EXIT_USAGE) from None
    finally:
        bars.close()
    where = Path(out) if out else spec.spec_path.parent / "evaluations"
    where.mkdir(parents=True, exist_ok=True)
    stem = f"{Path(result['data']).name}-{result['created_at'][:19].replace(':', '')}"
    (where / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (where / f"{stem}.html").write_text(render_html(result))
    if as_json:
        self.say(json.dumps(result, indent=1))
    else:
        _print_evaluation(self, result, where / f"{stem}.html")
    if not no_store:  # last: the evaluation is written and shown whether MongoDB answers or not
        from imgflow.mongo import connect
        from lifecycle import evaluations

        client = connect(settings.mongo_url)
        try:
            evaluations.save(client[settings.mongo_db], result)
        finally:
            client.close()


def _print_evaluation(self: Any, result: dict[str, Any], report: Path) -> None:
    metrics = result["metrics"]
    scope = "held-out split of " if result["held_out"] else ""
    self.say(
        f"{result['model']} on {scope}{result['data']}: {metrics['images']} images, "
        f"accuracy {metrics['accuracy']:.3f}, macro F1 {metrics['macro_f1']:.3f}"
    )
    for label, m in metrics["per_class"].items():
        self.say(
            f"  {label:<24} precision {m['precision']:.3f}  recall {m['recall']:.3f}  "
            f"F1 {m['f1']:.3f}  ({m['support']})"
        )
    binary = result.get("binary")
    if binary and binary["roc_auc"] is not None:
        c = binary["chosen"]
        self.say(
            f"ROC AUC {binary['roc_auc']:.3f}; threshold for {c['target']}: {c['threshold']:.2f} "
            f"(precision {c['precision']:.3f}, recall {c['recall']:.3f}, accuracy {c['accuracy']:.3f}"
            f"{'' if c['met'] else ', target not met'}); the spec says {binary['threshold_in_spec']}"
        )
    self.say(f"report: {report}")


def _feedback(self: Any, model: str | None, as_json: bool) -> None:
    from imgflow.mongo import connect
    from lifecycle.evaluations import feedback_accuracy

    client = connect(settings.mongo_url)
    try:
        found = feedback_accuracy(client[settings.mongo_db], model)
    finally:
        client.close()
    if as_json:
        self.say(json.dumps(found, indent=1))
        return
    self.say(f"{found['corrected_images']} corrected images")
    for key, m in found["models"].items():
        self.say(f"  {key:<40} {m['correct']}/{m['images']} right ({m['accuracy']:.1%})")


@command(
    option("--kind", type=click.Choice(["faces", "photos"]), default="faces", help="Which labelled set."),
    option("--out", required=True, help="Folder to write it into (kept files are not rewritten)."),
)
async def dataset(self, kind: str, out: str) -> None:
    """Write a labelled folder from images that ship in wheels: faces (binary) or photos (4 classes)."""
    from simulator.dataset import write_faces_dataset, write_photo_classes

    written = write_faces_dataset(Path(out)) if kind == "faces" else write_photo_classes(Path(out))
    counts = ", ".join(f"{label} {len(paths)}" for label, paths in written.items())
    self.say(f"wrote {kind} into {out}: {counts}")


@command(
    argument("spec", required=False),
    option("--rollback", is_flag=True, default=False, help="Restore the default before the current one."),
    option("--show", is_flag=True, default=False, help="Only print the current promotion."),
    option(
        "--wait", type=float, default=30.0, help="Seconds to wait for every worker to switch (0: no wait)."
    ),
)
async def promote(self, spec: str | None, rollback: bool, show: bool, wait: float) -> None:
    """Make a model version the default for new images on every worker, without a restart."""
    from lifecycle import promote as pr
    from models.registry import registry_for
    from models.spec import ModelError

    current = await pr.read_current(settings)
    if show:
        if current is None:
            self.say(f"no promotion: the default is IMGFLOW_MODEL ({settings.model_spec_path})")
        else:
            self.say(json.dumps(current.__dict__, indent=1))
        return
    if bool(spec) == rollback:
        self.say("promote: give a SPEC, or --rollback", file=self.stderr)
        raise SystemExit(EXIT_USAGE)
    try:
        if rollback:
            record = pr.rollback_of(current, settings, pr.who())
        else:
            # Only a registered model (models/registry.py): workers refuse any other.
            registry = registry_for(settings.model_dir_paths, settings.model_spec_path)
            registry.scan()
            chosen = registry.resolve(spec or "")
            if not chosen.artefact.exists():
                raise ModelError(f"{chosen.key}: artefact {chosen.artefact} is missing")
            record = pr.next_promotion(current, chosen.spec_path, chosen.key, pr.who())
    except (ModelError, ValueError) as exc:
        self.say(f"promote: {exc}", file=self.stderr)
        raise SystemExit(EXIT_USAGE) from None
    await pr.publish(settings, record)
    was = current.model if current else "IMGFLOW_MODEL"
    self.say(f"promoted {record.model} ({record.spec or settings.model_spec_path}); was {was}")
    if wait <= 0:
        return
    target = Path(record.spec) if record.spec else settings.model_spec_path
    reached = await pr.wait_for_workers(settings, target.resolve(), record.promoted_at, wait)
    for url, seconds in reached.items():
        state = f"switched {seconds:.2f} s after the promotion" if seconds is not None else "not switched"
        self.say(f"  {url}: {state}")
    if any(s is None for s in reached.values()):
        self.say(f"promote: not every worker switched within {wait:g} s (see their logs)", file=self.stderr)
        raise SystemExit(2)
