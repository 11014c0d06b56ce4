"""`asyncapi`: the documents that describe a landscape."""

from __future__ import annotations

from typing import Annotated

import typer

from loglane.asyncapi import asyncapi_document
from loglane.cli._common import App, app, clear_errors
from loglane.cli._output import print_json
from loglane.landscape import load_landscape


@app.command()
def asyncapi(
    app_path: App,
    log: Annotated[
        str | None,
        typer.Option(
            "--log",
            envvar="LOGLANE_LOG",
            help="The log's URL; a kafka:// one names the document's server",
        ),
    ] = None,
) -> None:
    """Print the AsyncAPI 3.0 document of the landscape's topics, events and operations."""
    with clear_errors():
        document = asyncapi_document(load_landscape(app_path), log_url=log)
    print_json(document)
