"""The `maedet-deploy` command line: thin typer commands over the library."""
