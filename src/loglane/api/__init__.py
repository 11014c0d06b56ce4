"""The HTTP API of app services, generated from their definitions (FastAPI on uvicorn).

    app = create_app(landscape, log, lambda name: open_store(db_url, name))

serves, for every service, `POST /<service>/commands/<Type>`, `GET /<service>/requests/<id>`
and `GET /<service>/views/<view>[/<key>]`, plus `/healthz`, `/readyz`, `/metrics` and `/docs`.
"""

from loglane.api.app import ApiState, create_app
from loglane.api.settings import ApiSettings

__all__ = ["ApiSettings", "ApiState", "create_app"]
