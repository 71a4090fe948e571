"""``POST /images/``: upload images over HTTP; each becomes one ``imgflow-paths`` message.

Request: ``multipart/form-data`` with one or many file parts (any field name;
``file``/``files``/``image``/``images`` are conventional), e.g.::

    curl -F file=@cat.jpg -F file=@dog.png http://127.0.0.1:6066/images/

or one image as the raw body (``curl --data-binary @cat.jpg -H 'Content-Type:
image/jpeg' http://127.0.0.1:6066/images/?filename=cat.jpg``).

With ``IMGFLOW_API_TOKEN`` set, add ``-H "Authorization: Bearer $IMGFLOW_API_TOKEN"``;
without it the answer is ``401`` (imgflow/auth.py guards every write).

Response ``201``::

    {"image_ids": ["<id>", ...],
     "images": [{"image_id": "<id>", "file_name": "cat.jpg", "stored_as": "2026-11-01/<id>.jpg",
                 "format": "JPEG", "width": 451, "height": 300, "bytes": 61424,
                 "result": "/images/<id>"}, ...]}

``GET /images/{image_id}`` (``views.py``) answers with the result once stored.

The files themselves (limits, sniffing, generated names, all or nothing) are
handled by ``sources/upload.py``; this view only answers HTTP.
"""

from __future__ import annotations

import asyncio
import logging

from faust.web import Request, Response, View

from imgflow.app import app, settings
from sources.upload import Refused, UploadSession

log = logging.getLogger(__name__)


@app.page("/images/")
class ImageUpload(View):
    """Upload one or many images; answers with their ids (201)."""

    async def post(self, request: Request) -> Response:
        root = settings.upload_path.resolve()
        session = UploadSession(root, settings.max_upload_bytes, settings.max_pixels, settings.upload_uri)
        try:
            await session.receive_request(request)
            await asyncio.to_thread(session.commit)
        except Refused as exc:
            session.discard()
            log.info("upload refused (%d): %s", exc.status, exc.message)
            return self.json(exc.body(), status=exc.status)
        except BaseException:
            session.discard()
            raise
        try:
            ids = await session.publish()
        except Exception as exc:
            session.discard()
            log.error("upload of %d files not published: %s", len(session.files), exc)
            return self.json({"error": f"could not publish the images, try again: {exc}"}, status=503)
        log.info("uploaded %d images: %s", len(ids), ", ".join(ids))
        headers = {"Location": f"/images/{ids[0]}"} if len(ids) == 1 else None
        return self.json(
            {"image_ids": ids, "images": [s.as_json(root) for s in session.files]},
            status=201,
            headers=headers,
        )
