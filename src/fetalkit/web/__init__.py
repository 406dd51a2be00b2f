"""``fetalkit serve``: a local web page over the same functions as the CLI (needs the ``web`` extra).

``fetalkit.web.settings`` imports without the extra; ``app`` and ``server`` need
FastAPI, uvicorn and python-multipart (``pip install 'fetalkit[web]'``).
"""
