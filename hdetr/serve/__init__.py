"""``hdetr serve``: an HTTP service and a web page around a :class:`hdetr.api.Detector`.

Needs the ``serve`` extra (FastAPI, uvicorn, python-multipart): ``pip install 'hdetr[serve]'``.

    from hdetr import Detector
    from hdetr.serve import create_app
    app = create_app(Detector.from_checkpoint("runs/demo/run/model"), threshold=0.3)
"""

from .app import create_app

__all__ = ["create_app"]
