"""``faces``: the people a face model knows (imgflow/people.py).

- ``faces enroll NAME IMAGE... [--model SPEC]``: the most confident face of each image,
  embedded by the face model exactly as a worker does (same decode, same letterbox), added
  to NAME for that model version. An image without a face is reported and skipped.
- ``faces list``: who is enrolled, for which model version, from how many images.
- ``faces remove NAME``: forget a person (every model version).

Workers see a change within ``imgflow.people.REFRESH`` seconds, without a restart.
"""

from __future__ import annotations

import json
from pathlib import Path

from faust.cli import argument, option

import models
from cli.command import command
from imgflow.app import settings

#: The bundled face model spec (MTCNN + embedder from their wheels), package data of ``models``.
DEFAULT_FACE_SPEC = Path(models.__file__).resolve().parent / "specs" / "faces.toml"


@command(
    argument("action", type=str),
    argument("args", nargs=-1),
    option(
        "--model", default=None, help="The face model spec (default: the bundled models/specs/faces.toml)."
    ),
)
async def faces(self, action: str, args: tuple[str, ...], model: str | None) -> None:
    """Enrol, list or remove known people: faces enroll NAME IMAGE... | faces list | faces remove NAME."""
    from imgflow import people
    from imgflow.mongo import connect

    client = connect(settings.mongo_url)
    db = client[settings.mongo_db]
    try:
        if action == "list":
            found = people.listing(db)
            if self.json:
                self.say(json.dumps(found, default=str))
            elif not found:
                self.say("nobody enrolled")
            for p in found if not self.json else []:
                self.say(f"{p['name']}\t{p['model']}:{p['model_version']}\t{p['embeddings']} faces")
        elif action == "remove":
            if len(args) != 1:
                raise SystemExit("usage: faces remove NAME")
            gone = people.remove(db, args[0])
            if not gone:
                raise SystemExit(f"faces: nobody called {args[0]!r} is enrolled")
            self.say(f"removed {args[0]} ({gone} model versions)")
        elif action == "enroll":
            if len(args) < 2:
                raise SystemExit("usage: faces enroll NAME IMAGE...")
            _enroll(self, db, args[0], [Path(a) for a in args[1:]], model)
        else:
            raise SystemExit(f"faces: unknown action {action!r}; use enroll, list or remove")
    finally:
        client.close()


def _enroll(self, db, name: str, images: list[Path], model: str | None) -> None:
    from imgflow import people
    from imgflow.imaging import ImageRejected, decode_image, decode_limits
    from models.face_model import load_face_model
    from models.spec import load_spec

    spec = load_spec(model or DEFAULT_FACE_SPEC)
    if spec.output != "faces":
        raise SystemExit(f"faces: {spec.spec_path} is not a face model (output = {spec.output!r})")
    face_model = load_face_model(spec)
    limits = decode_limits(settings)
    found = []
    for path in images:
        try:
            decoded = decode_image(path, spec.input_size, spec.resize, limits, draft=settings.decode_draft)
        except ImageRejected as exc:
            self.say(f"skipped {path}: {exc.kind}: {exc.message}", file=self.stderr)
            continue
        [hits] = face_model.faces(decoded.tensor[None])
        if not hits:
            self.say(f"skipped {path}: no face found", file=self.stderr)
            continue
        if len(hits) > 1:
            self.say(f"{path}: {len(hits)} faces, enrolling the most confident", file=self.stderr)
        found.append((path.name, hits[0].embedding))
    if not found:
        raise SystemExit(f"faces: no face found in any of the {len(images)} images; nothing enrolled")
    doc = people.enroll(db, name, spec.name, spec.version, found)
    total = len(doc.get("embeddings", []))
    if self.json:
        self.say(json.dumps({"name": name, "model": spec.key, "added": len(found), "embeddings": total}))
    else:
        self.say(f"enrolled {name} for {spec.key}: {len(found)} faces added, {total} in all")
